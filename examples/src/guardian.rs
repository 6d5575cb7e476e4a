//! The Guardian advice service: the HTTP API asks, a consumer answers. `POST /guardian/advice`
//! waits for the reply of the `guardian.requests` handler (request-reply, with a correlation
//! id and a deadline); `GET /guardian/advice/stream` streams the answer of
//! `guardian.requests.stream` sentence by sentence.

use std::time::{Duration, Instant};

use messaging_core::prelude::*;
use serde::{Deserialize, Serialize};

use crate::mood::MoodHistory;

/// The topic of advice requests.
pub const REQUESTS: &str = "guardian.requests";
/// The topic of advice requests answered as a stream.
pub const STREAMED_REQUESTS: &str = "guardian.requests.stream";

/// What a user asks a guardian.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdviceRequest {
    /// Who asks.
    pub user_id: String,
    /// `mental`, `physical` or `spiritual`.
    pub guardian_type: String,
    /// The question.
    pub query: String,
}

/// A guardian's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Advice {
    /// Who asked.
    pub user_id: String,
    /// The guardian that answered.
    pub guardian_type: String,
    /// The answer.
    pub response: String,
    /// How sure the guardian is, 0 to 1.
    pub confidence_score: f32,
    /// How long the answer took.
    pub processing_time_ms: f64,
}

/// The guardian's answer, sentence by sentence (stands in for a language model that uses
/// the user's mood history).
fn sentences(request: &AdviceRequest, history: &MoodHistory) -> Vec<String> {
    let mood = match history.average(&request.user_id) {
        Some(average) if average < 5.0 => "Your recent moods have been low.",
        Some(_) => "Your recent moods have been steady.",
        None => "I have no mood entries from you yet.",
    };
    vec![
        format!(
            "You asked the {} guardian: {}",
            request.guardian_type, request.query
        ),
        mood.to_owned(),
        "Sleep at regular hours this week.".to_owned(),
        "Take a short walk after lunch.".to_owned(),
        "Write down one thing that went well each evening.".to_owned(),
    ]
}

/// Answers an advice request; the runtime sends the `Ok` value back to the requester.
#[message_handler(topic = "guardian.requests", group = "agents-guardians")]
pub async fn advise(
    request: AdviceRequest,
    history: State<MoodHistory>,
) -> Result<Advice, HandlerError> {
    let started = Instant::now();
    if request.query.trim().is_empty() {
        return Err(HandlerError::permanent("the query is empty"));
    }
    let response = sentences(&request, &history).join(" ");
    println!(
        "[guardian] {} guardian answers user {}",
        request.guardian_type, request.user_id
    );
    Ok(Advice {
        user_id: request.user_id,
        guardian_type: request.guardian_type,
        response,
        confidence_score: 0.85,
        processing_time_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Answers an advice request one sentence at a time, as a model would generate it.
#[message_handler(topic = "guardian.requests.stream", group = "agents-guardians")]
pub async fn advise_streamed(
    request: AdviceRequest,
    history: State<MoodHistory>,
) -> Result<ReplyStream<String>, HandlerError> {
    let sentences = sentences(&request, &history);
    let paced = futures::stream::unfold(sentences.into_iter(), |mut rest| async move {
        let next = rest.next()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((next, rest))
    });
    Ok(ReplyStream::new(paced))
}
