//! Parsing of the attribute arguments shared by the four macros: `key = value` pairs, an
//! optional leading string (the event name of `#[on_event]` and `#[event]`), every bad key
//! reported at once with its span.

use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{Lookahead1, ParseStream, Parser};
use syn::{LitBool, LitInt, LitStr, Token, Type};

use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(topic);
    syn::custom_keyword!(topics);
    syn::custom_keyword!(group);
    syn::custom_keyword!(max_retries);
    syn::custom_keyword!(retry_delay);
    syn::custom_keyword!(backoff);
    syn::custom_keyword!(max_delay);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(dlq);
    syn::custom_keyword!(retry_topics);
    syn::custom_keyword!(schema);
    syn::custom_keyword!(name_field);
    syn::custom_keyword!(data_field);
    syn::custom_keyword!(key_field);
    syn::custom_keyword!(include_result);
    syn::custom_keyword!(retry);
    syn::custom_keyword!(publish_to);
    syn::custom_keyword!(idempotent);
    syn::custom_keyword!(idempotency_key);
}

/// Every key any of the macros knows. Each macro accepts a subset (see the `*_KEYS` lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Param {
    Topic,
    Topics,
    Group,
    MaxRetries,
    RetryDelay,
    Backoff,
    MaxDelay,
    Timeout,
    Dlq,
    RetryTopics,
    Schema,
    NameField,
    DataField,
    KeyField,
    IncludeResult,
    /// `idempotent` (or `idempotent = true`): at most once per idempotency key and group.
    Idempotent,
    /// `idempotency_key = "field"` on `#[event]`: the data's field that is the key.
    IdempotencyKey,
    /// `retry(max = 3, delay = "5s", …)`: the grouped form of the retry keys.
    Retry,
    /// `crate = "path"`: where the generated code finds `messaging_core`.
    Crate,
    /// `publish_to = "topic"`: the handler's `Ok` value is published there as an event.
    PublishTo,
}

impl Param {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Param::Topic => "topic",
            Param::Topics => "topics",
            Param::Group => "group",
            Param::MaxRetries => "max_retries",
            Param::RetryDelay => "retry_delay",
            Param::Backoff => "backoff",
            Param::MaxDelay => "max_delay",
            Param::Timeout => "timeout",
            Param::Dlq => "dlq",
            Param::RetryTopics => "retry_topics",
            Param::Schema => "schema",
            Param::NameField => "name_field",
            Param::DataField => "data_field",
            Param::KeyField => "key_field",
            Param::IncludeResult => "include_result",
            Param::Idempotent => "idempotent",
            Param::IdempotencyKey => "idempotency_key",
            Param::Retry => "retry",
            Param::Crate => "crate",
            Param::PublishTo => "publish_to",
        }
    }

    /// Peeks through `lookahead`, so that its error lists exactly the keys that were tried.
    fn peek(self, lookahead: &Lookahead1<'_>) -> bool {
        match self {
            Param::Topic => lookahead.peek(kw::topic),
            Param::Topics => lookahead.peek(kw::topics),
            Param::Group => lookahead.peek(kw::group),
            Param::MaxRetries => lookahead.peek(kw::max_retries),
            Param::RetryDelay => lookahead.peek(kw::retry_delay),
            Param::Backoff => lookahead.peek(kw::backoff),
            Param::MaxDelay => lookahead.peek(kw::max_delay),
            Param::Timeout => lookahead.peek(kw::timeout),
            Param::Dlq => lookahead.peek(kw::dlq),
            Param::RetryTopics => lookahead.peek(kw::retry_topics),
            Param::Schema => lookahead.peek(kw::schema),
            Param::NameField => lookahead.peek(kw::name_field),
            Param::DataField => lookahead.peek(kw::data_field),
            Param::KeyField => lookahead.peek(kw::key_field),
            Param::IncludeResult => lookahead.peek(kw::include_result),
            Param::Idempotent => lookahead.peek(kw::idempotent),
            Param::IdempotencyKey => lookahead.peek(kw::idempotency_key),
            Param::Retry => lookahead.peek(kw::retry),
            Param::Crate => lookahead.peek(Token![crate]),
            Param::PublishTo => lookahead.peek(kw::publish_to),
        }
    }

    /// What the value looks like, for error messages.
    fn example(self) -> &'static str {
        match self {
            Param::Topic => r#"topic = "orders.created""#,
            Param::Topics => r#"topics = ["user-events", "payment-events"]"#,
            Param::Group => r#"group = "order-service""#,
            Param::MaxRetries => "max_retries = 3",
            Param::RetryDelay => r#"retry_delay = "5s""#,
            Param::Backoff => r#"backoff = "exponential""#,
            Param::MaxDelay => r#"max_delay = "1m""#,
            Param::Timeout => r#"timeout = "30s""#,
            Param::Dlq => r#"dlq = "orders.dead""#,
            Param::RetryTopics => "retry_topics = true",
            Param::Schema => "schema = OrderCreated",
            Param::NameField => r#"name_field = "type""#,
            Param::DataField => r#"data_field = "payload""#,
            Param::KeyField => r#"key_field = "id""#,
            Param::IncludeResult => "include_result = false",
            Param::Idempotent => "idempotent",
            Param::IdempotencyKey => r#"idempotency_key = "order_id""#,
            Param::Retry => r#"retry(max = 3, delay = "5s", backoff = "linear")"#,
            Param::Crate => r#"crate = "my_facade""#,
            Param::PublishTo => r#"publish_to = "context.aggregated""#,
        }
    }
}

pub(crate) const MESSAGE_HANDLER_KEYS: &[Param] = &[
    Param::Topic,
    Param::Group,
    Param::MaxRetries,
    Param::RetryDelay,
    Param::Backoff,
    Param::MaxDelay,
    Param::Timeout,
    Param::Retry,
    Param::Dlq,
    Param::RetryTopics,
    Param::Idempotent,
    Param::Schema,
    Param::PublishTo,
    Param::Crate,
];

pub(crate) const CONSUMER_KEYS: &[Param] = &[
    Param::Group,
    Param::Topics,
    Param::NameField,
    Param::DataField,
    Param::MaxRetries,
    Param::RetryDelay,
    Param::Backoff,
    Param::MaxDelay,
    Param::Timeout,
    Param::Retry,
    Param::Dlq,
    Param::RetryTopics,
    Param::Idempotent,
    Param::Crate,
];

pub(crate) const ON_EVENT_KEYS: &[Param] = &[
    Param::PublishTo,
    Param::MaxRetries,
    Param::RetryDelay,
    Param::Backoff,
    Param::MaxDelay,
    Param::Timeout,
    Param::Retry,
    Param::Dlq,
    Param::RetryTopics,
    Param::Idempotent,
];

pub(crate) const EVENT_KEYS: &[Param] = &[
    Param::Topic,
    Param::KeyField,
    Param::IdempotencyKey,
    Param::IncludeResult,
    Param::Crate,
];

/// The keys of `retry(…)` and the flat key each stands for.
const RETRY_GROUP: &[(&str, Param)] = &[
    ("max", Param::MaxRetries),
    ("delay", Param::RetryDelay),
    ("backoff", Param::Backoff),
    ("max_delay", Param::MaxDelay),
    ("timeout", Param::Timeout),
];

/// A topic: a string literal, or the path of a `const` of type `&str` (checked by the
/// compiler, and for emptiness by a const assertion in the generated code).
#[derive(Clone, Debug)]
pub(crate) enum Topic {
    Lit(LitStr),
    Const(syn::Path),
}

impl ToTokens for Topic {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Topic::Lit(lit) => lit.to_tokens(tokens),
            Topic::Const(path) => path.to_tokens(tokens),
        }
    }
}

impl Topic {
    /// How it is compared with the other topics of the list for repeats.
    fn written(&self) -> String {
        match self {
            Topic::Lit(lit) => format!("{:?}", lit.value()),
            Topic::Const(path) => path.to_token_stream().to_string().replace(' ', ""),
        }
    }

    pub(crate) fn span(&self) -> Span {
        match self {
            Topic::Lit(lit) => lit.span(),
            Topic::Const(path) => syn::spanned::Spanned::span(path),
        }
    }
}

/// A value and where it was written.
#[derive(Clone, Debug)]
pub(crate) struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// The retry keys, shared by `#[message_handler]`, `#[consumer]` and `#[on_event]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct RetryArgs {
    pub max_retries: Option<Spanned<u32>>,
    pub retry_delay: Option<Spanned<Duration>>,
    pub backoff: Option<Spanned<Backoff>>,
    pub max_delay: Option<Spanned<Duration>>,
    pub timeout: Option<Spanned<Duration>>,
    pub dlq: Option<LitStr>,
    pub retry_topics: Option<LitBool>,
    /// `idempotent`: kept with the retry keys, so that a `#[consumer]`'s applies to every
    /// method that says nothing.
    pub idempotent: Option<LitBool>,
}

impl RetryArgs {
    /// `self` with the keys `self` lacks taken from `defaults` (a `#[consumer]`'s).
    pub(crate) fn or(&self, defaults: &RetryArgs) -> RetryArgs {
        RetryArgs {
            max_retries: self
                .max_retries
                .clone()
                .or_else(|| defaults.max_retries.clone()),
            retry_delay: self
                .retry_delay
                .clone()
                .or_else(|| defaults.retry_delay.clone()),
            backoff: self.backoff.clone().or_else(|| defaults.backoff.clone()),
            max_delay: self
                .max_delay
                .clone()
                .or_else(|| defaults.max_delay.clone()),
            timeout: self.timeout.clone().or_else(|| defaults.timeout.clone()),
            dlq: self.dlq.clone().or_else(|| defaults.dlq.clone()),
            retry_topics: self
                .retry_topics
                .clone()
                .or_else(|| defaults.retry_topics.clone()),
            idempotent: self
                .idempotent
                .clone()
                .or_else(|| defaults.idempotent.clone()),
        }
    }

    /// A `max_delay` shorter than the `retry_delay` of the same attribute is a mistake.
    fn check(&self, errors: &mut Errors) {
        if let (Some(delay), Some(max)) = (&self.retry_delay, &self.max_delay)
            && max.value < delay.value
        {
            errors.push(syn::Error::new(
                max.span,
                format!(
                    "`max_delay` ({}) is shorter than `retry_delay` ({}); it caps every wait, \
                     so make it at least `retry_delay`",
                    humantime::format_duration(max.value),
                    humantime::format_duration(delay.value)
                ),
            ));
        }
    }
}

/// The back-off names of `backoff = "…"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backoff {
    Constant,
    Linear,
    Exponential,
}

/// Everything any of the macros may be given. Which keys are accepted is decided by the list
/// passed to [`parse_args`].
#[derive(Default)]
pub(crate) struct Args {
    /// The leading string of `#[on_event("…")]` and `#[event("…")]`.
    pub name: Option<LitStr>,
    /// `topic` or `topics`; never empty, no empty name.
    pub topics: Option<Spanned<Vec<Topic>>>,
    pub group: Option<LitStr>,
    pub retry: RetryArgs,
    pub schema: Option<Type>,
    pub name_field: Option<LitStr>,
    pub data_field: Option<LitStr>,
    pub key_field: Option<LitStr>,
    pub idempotency_key: Option<LitStr>,
    pub include_result: Option<LitBool>,
    /// `crate = "…"`: the path of `messaging_core` in generated code.
    pub krate: Option<syn::Path>,
    /// `publish_to = "…"`: one topic (a literal or a `const`).
    pub publish_to: Option<Topic>,
}

impl Args {
    /// The path the generated code reaches `messaging_core` by.
    pub(crate) fn krate(&self) -> TokenStream {
        match &self.krate {
            Some(path) => path.to_token_stream(),
            None => quote::quote!(::messaging_core),
        }
    }
}

/// Whether the attribute starts with a string that is not a key (the event name).
pub(crate) enum Leading {
    None,
    /// The event name is expected first.
    EventName {
        /// The whole attribute as it should look, for the error message.
        example: &'static str,
        /// Where to report a missing name: the attribute's tokens, or nothing for the macro's
        /// own call site.
        attribute: TokenStream,
        /// Whether leaving it out is an error (else the caller finds the name elsewhere).
        required: bool,
    },
}

/// Parses the arguments of `#[<macro_name>(…)]`, accepting the keys in `allowed`. Every
/// problem is collected, so a user sees all of them in one build.
pub(crate) fn parse_args(
    tokens: TokenStream,
    macro_name: &str,
    allowed: &[Param],
    leading: Leading,
) -> syn::Result<Args> {
    let parser = |input: ParseStream<'_>| {
        let mut errors = Errors::default();
        let mut args = Args::default();
        let mut seen: Vec<(Param, bool)> = Vec::new();
        if let Leading::EventName {
            example,
            attribute,
            required,
        } = &leading
        {
            let missing_at = required.then_some(attribute);
            parse_leading_name(
                input,
                macro_name,
                example,
                missing_at,
                &mut args,
                &mut errors,
            );
        }
        while !input.is_empty() {
            parse_pair(
                input,
                macro_name,
                allowed,
                &mut seen,
                &mut args,
                &mut errors,
            );
            if input.is_empty() {
                break;
            }
            if let Err(error) = input.parse::<Token![,]>() {
                errors.push(error);
                skip_to_comma(input);
                let _ = input.parse::<Option<Token![,]>>();
            }
        }
        args.retry.check(&mut errors);
        errors.finish()?;
        Ok(args)
    };
    parser.parse2(tokens)
}

fn parse_leading_name(
    input: ParseStream<'_>,
    macro_name: &str,
    example: &str,
    missing_at: Option<&TokenStream>,
    args: &mut Args,
    errors: &mut Errors,
) {
    if input.peek(LitStr)
        && let Ok(name) = input.parse::<LitStr>()
    {
        if name.value().trim().is_empty() {
            errors.push(syn::Error::new(
                name.span(),
                format!("the event name cannot be empty; write it first: `{example}`"),
            ));
        }
        args.name = Some(name);
        if !input.is_empty()
            && let Err(error) = input.parse::<Token![,]>()
        {
            errors.push(error);
            skip_to_comma(input);
            let _ = input.parse::<Option<Token![,]>>();
        }
        return;
    }
    // A key written first: the name is missing, the keys can still be checked.
    let fork = input.fork();
    let starts_with_key = fork.parse::<syn::Ident>().is_ok() && fork.peek(Token![=]);
    let message =
        format!("#[{macro_name}] needs the event name first, as a string literal: `{example}`");
    if starts_with_key || input.is_empty() {
        match missing_at {
            None => {}
            Some(attribute) if attribute.is_empty() => {
                errors.push(syn::Error::new(Span::call_site(), message));
            }
            Some(attribute) => errors.push(syn::Error::new_spanned(attribute, message)),
        }
    } else {
        let tokens = skip_to_comma(input);
        errors.push(syn::Error::new_spanned(tokens, message));
        let _ = input.parse::<Option<Token![,]>>();
    }
}

/// Parses one `key = value`, recording the value or the error.
fn parse_pair(
    input: ParseStream<'_>,
    macro_name: &str,
    allowed: &[Param],
    seen: &mut Vec<(Param, bool)>,
    args: &mut Args,
    errors: &mut Errors,
) {
    let lookahead = input.lookahead1();
    let Some(key) = allowed.iter().copied().find(|key| key.peek(&lookahead)) else {
        errors.push(unknown_key(input, macro_name, allowed, lookahead.error()));
        skip_to_comma(input);
        return;
    };
    let key_span = match input.call(<syn::Ident as syn::ext::IdentExt>::parse_any) {
        Ok(ident) => ident.span(),
        Err(error) => {
            errors.push(error);
            skip_to_comma(input);
            return;
        }
    };
    if let Err(error) = first_time(seen, key, false, key_span) {
        errors.push(error);
        skip_to_comma(input);
        return;
    }
    if key == Param::Retry {
        parse_retry(input, key_span, seen, args, errors);
        return;
    }
    // A flag: `idempotent` alone means `idempotent = true`.
    if key == Param::Idempotent && (input.is_empty() || input.peek(Token![,])) {
        args.retry.idempotent = Some(LitBool::new(true, key_span));
        return;
    }
    if input.parse::<Token![=]>().is_err() {
        errors.push(syn::Error::new(
            key_span,
            format!("`{}` needs a value: `{}`", key.name(), key.example()),
        ));
        skip_to_comma(input);
        return;
    }
    let value = skip_to_comma(input);
    if let Some(next_key) = missing_comma(&value) {
        errors.push(syn::Error::new(
            next_key.span(),
            format!("expected `,` before `{next_key}`: keys are separated by commas"),
        ));
        return;
    }
    if value.is_empty() {
        errors.push(syn::Error::new(
            key_span,
            format!("`{}` needs a value: `{}`", key.name(), key.example()),
        ));
        return;
    }
    if let Err(error) = store(key, value, args) {
        errors.push(error);
    }
}

/// `retry(max = 3, delay = "5s", …)` after the key `retry`; `retry = …` is the design card's
/// shorthand that never existed, answered with the two spellings that do.
fn parse_retry(
    input: ParseStream<'_>,
    key_span: Span,
    seen: &mut Vec<(Param, bool)>,
    args: &mut Args,
    errors: &mut Errors,
) {
    if input.peek(syn::token::Paren) {
        if let Ok(TokenTree::Group(group)) = input.parse::<TokenTree>() {
            let parser = |content: ParseStream<'_>| {
                parse_retry_group(content, seen, args, errors);
                Ok(())
            };
            if let Err(error) = parser.parse2(group.stream()) {
                errors.push(error);
            }
        }
        // Anything after `retry(…)` and before the comma is stray.
        let rest = skip_to_comma(input);
        if !rest.is_empty() {
            errors.push(syn::Error::new_spanned(
                rest,
                "expected `,` after `retry(…)`: keys are separated by commas",
            ));
        }
        return;
    }
    let grouped = Param::Retry.example();
    let message = if input.parse::<Token![=]>().is_ok() {
        let value = skip_to_comma(input);
        match syn::parse2::<syn::Lit>(value.clone()) {
            Ok(syn::Lit::Int(n)) => {
                let n = n.base10_digits();
                format!(
                    "there is no key `retry = {n}`: did you mean `max_retries = {n}`, or the \
                     grouped form `retry(max = {n})`?"
                )
            }
            Ok(syn::Lit::Str(delay)) => {
                let delay = delay.value();
                format!(
                    "there is no key `retry = \"{delay}\"`: did you mean `retry_delay = \"{delay}\"`, \
                     or the grouped form `retry(delay = \"{delay}\")`?"
                )
            }
            _ => format!(
                "`retry` takes its settings in parentheses, `{grouped}`; or write them as \
                 `max_retries = 3, retry_delay = \"5s\"`"
            ),
        }
    } else {
        skip_to_comma(input);
        format!("`retry` takes its settings in parentheses: `{grouped}`")
    };
    errors.push(syn::Error::new(key_span, message));
}

/// The inside of `retry(…)`: the retry keys under short names, each one stored as its flat key
/// is (so the two forms cannot both set one value).
fn parse_retry_group(
    input: ParseStream<'_>,
    seen: &mut Vec<(Param, bool)>,
    args: &mut Args,
    errors: &mut Errors,
) {
    while !input.is_empty() {
        parse_retry_pair(input, seen, args, errors);
        if input.is_empty() {
            break;
        }
        if let Err(error) = input.parse::<Token![,]>() {
            errors.push(error);
            skip_to_comma(input);
            let _ = input.parse::<Option<Token![,]>>();
        }
    }
}

fn parse_retry_pair(
    input: ParseStream<'_>,
    seen: &mut Vec<(Param, bool)>,
    args: &mut Args,
    errors: &mut Errors,
) {
    let ident = match input.call(<syn::Ident as syn::ext::IdentExt>::parse_any) {
        Ok(ident) => ident,
        Err(error) => {
            errors.push(error);
            skip_to_comma(input);
            return;
        }
    };
    let found = ident.to_string();
    let Some(&(name, key)) = RETRY_GROUP.iter().find(|(name, _)| *name == found) else {
        errors.push(unknown_retry_key(&ident));
        skip_to_comma(input);
        return;
    };
    if let Err(error) = first_time(seen, key, true, ident.span()) {
        errors.push(error);
        skip_to_comma(input);
        return;
    }
    let example = || key.example().replacen(key.name(), name, 1);
    if input.parse::<Token![=]>().is_err() {
        errors.push(syn::Error::new(
            ident.span(),
            format!("`{name}` needs a value: `retry({})`", example()),
        ));
        skip_to_comma(input);
        return;
    }
    let value = skip_to_comma(input);
    if let Some(next_key) = missing_comma(&value) {
        errors.push(syn::Error::new(
            next_key.span(),
            format!("expected `,` before `{next_key}`: keys are separated by commas"),
        ));
        return;
    }
    if value.is_empty() {
        errors.push(syn::Error::new(
            ident.span(),
            format!("`{name}` needs a value: `retry({})`", example()),
        ));
        return;
    }
    if let Err(error) = store(key, value, args) {
        errors.push(error);
    }
}

fn unknown_retry_key(ident: &proc_macro2::Ident) -> syn::Error {
    let found = ident.to_string();
    let valid: Vec<String> = RETRY_GROUP
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    let hint = if let Some((name, key)) = RETRY_GROUP.iter().find(|(_, key)| key.name() == found) {
        format!(
            " (inside `retry(…)` it is `{name}`: `retry({})`)",
            key.example().replacen(key.name(), name, 1)
        )
    } else if found == "dlq" || found == "retry_topics" {
        format!(" (`{found}` stays outside: `retry(max = 3), {found} = …`)")
    } else {
        let tolerance = (found.len() / 3).max(2);
        RETRY_GROUP
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| edit_distance(name, &found) <= tolerance)
            .min_by_key(|name| edit_distance(name, &found))
            .map(|name| format!(" (did you mean `{name}`?)"))
            .unwrap_or_default()
    };
    syn::Error::new(
        ident.span(),
        format!(
            "unknown key `{found}` in `retry(…)`{hint}; expected one of: {}",
            valid.join(", ")
        ),
    )
}

/// The error for a token that is not one of `allowed`: names it, lists the valid keys and
/// suggests the nearest one.
fn unknown_key(
    input: ParseStream<'_>,
    macro_name: &str,
    allowed: &[Param],
    fallback: syn::Error,
) -> syn::Error {
    let fork = input.fork();
    let Ok(ident) = fork.call(<syn::Ident as syn::ext::IdentExt>::parse_any) else {
        return fallback;
    };
    let valid: Vec<String> = allowed.iter().map(|k| format!("`{}`", k.name())).collect();
    let found = ident.to_string();
    let tolerance = (found.len() / 3).max(2);
    let hint = allowed
        .iter()
        .map(|k| k.name())
        .filter(|name| edit_distance(name, &found) <= tolerance)
        .min_by_key(|name| edit_distance(name, &found))
        .map(|name| format!(" (did you mean `{name}`?)"))
        .unwrap_or_default();
    let extra = if found == "topics" && allowed.contains(&Param::Topic) {
        "; several topics go in an array: `topic = [\"a\", \"b\"]`"
    } else if found == "topic" && allowed.contains(&Param::Topics) {
        "; a consumer names its topics with `topics = [\"a\", \"b\"]`"
    } else if found == "crate" && macro_name == "on_event" {
        "; `crate` goes on the #[consumer], which uses it for every method"
    } else {
        ""
    };
    syn::Error::new(
        ident.span(),
        format!(
            "unknown key `{found}` for #[{macro_name}]{hint}; expected one of: {}{extra}",
            valid.join(", ")
        ),
    )
}

/// In `topic = "a" group = "b"`, the value of `topic` runs into the next key: returns `group`.
fn missing_comma(value: &TokenStream) -> Option<proc_macro2::Ident> {
    let tokens: Vec<TokenTree> = value.clone().into_iter().collect();
    tokens.windows(2).skip(1).find_map(|pair| match pair {
        [TokenTree::Ident(ident), TokenTree::Punct(eq)] if eq.as_char() == '=' => {
            Some(ident.clone())
        }
        _ => None,
    })
}

/// Consumes tokens up to (not including) the next top-level comma and returns them.
fn skip_to_comma(input: ParseStream<'_>) -> TokenStream {
    input
        .step(|cursor| {
            let mut rest = *cursor;
            let mut skipped = TokenStream::new();
            while let Some((tt, next)) = rest.token_tree() {
                if let TokenTree::Punct(p) = &tt
                    && p.as_char() == ','
                {
                    break;
                }
                skipped.extend([tt]);
                rest = next;
            }
            Ok((skipped, rest))
        })
        .unwrap_or_default()
}

/// Stores the value of `key`, or says why it is not valid.
fn store(key: Param, value: TokenStream, args: &mut Args) -> syn::Result<()> {
    match key {
        Param::Topic | Param::Topics => {
            let topics = parse_topics(key, value)?;
            set(&mut args.topics, topics)
        }
        Param::Group => {
            let group = parse_or(value, key, "a string", syn::parse2::<LitStr>)?;
            if group.value().trim().is_empty() {
                return Err(syn::Error::new(
                    group.span(),
                    "`group = \"\"` names no group: write `group = \"order-service\"`, or leave \
                     `group` out for the default (the handler's name; for a #[consumer], its \
                     type's name)",
                ));
            }
            set(&mut args.group, group)
        }
        Param::MaxRetries => set(&mut args.retry.max_retries, parse_retries(value)?),
        Param::RetryDelay => set(&mut args.retry.retry_delay, parse_duration(key, value)?),
        Param::MaxDelay => set(&mut args.retry.max_delay, parse_duration(key, value)?),
        Param::Timeout => {
            let timeout = parse_duration(key, value)?;
            if timeout.value.is_zero() {
                return Err(syn::Error::new(
                    timeout.span,
                    "a zero `timeout` would fail every attempt; leave `timeout` out for no limit",
                ));
            }
            set(&mut args.retry.timeout, timeout)
        }
        Param::Backoff => set(&mut args.retry.backoff, parse_backoff(value)?),
        Param::Dlq => {
            let dlq = parse_or(value, key, "a topic name", syn::parse2::<LitStr>)?;
            if dlq.value().trim().is_empty() {
                return Err(syn::Error::new(
                    dlq.span(),
                    "`dlq = \"\"` names no topic: write `dlq = \"orders.dead\"`, or leave `dlq` \
                     out for the default `<topic>.dlq`",
                ));
            }
            check_topic(key, &dlq)?;
            set(&mut args.retry.dlq, dlq)
        }
        Param::RetryTopics => {
            let lit = parse_or(value, key, "a boolean", syn::parse2::<LitBool>)?;
            set(&mut args.retry.retry_topics, lit)
        }
        Param::Idempotent => {
            let lit = syn::parse2::<LitBool>(value.clone()).map_err(|_| {
                syn::Error::new_spanned(
                    &value,
                    "`idempotent` is a flag: write `idempotent` (or `idempotent = true`); the \
                     idempotency key comes from the message (`x-idempotency-key`, else the \
                     envelope id)",
                )
            })?;
            set(&mut args.retry.idempotent, lit)
        }
        Param::IdempotencyKey => set(&mut args.idempotency_key, non_empty_str(key, value)?),
        Param::Schema => set(&mut args.schema, parse_schema(value)?),
        Param::PublishTo => {
            let topics = parse_topics(key, value)?;
            let mut list = topics.value;
            match (list.pop(), list.is_empty()) {
                (Some(topic), true) => set(&mut args.publish_to, topic),
                _ => Err(syn::Error::new(
                    topics.span,
                    "`publish_to` names one topic: `publish_to = \"context.aggregated\"`",
                )),
            }
        }
        Param::NameField => set(&mut args.name_field, non_empty_str(key, value)?),
        Param::DataField => set(&mut args.data_field, non_empty_str(key, value)?),
        Param::KeyField => set(&mut args.key_field, non_empty_str(key, value)?),
        Param::IncludeResult => {
            let lit = parse_or(value, key, "a boolean", syn::parse2::<LitBool>)?;
            set(&mut args.include_result, lit)
        }
        Param::Crate => {
            let lit = parse_or(value, key, "a path as a string", syn::parse2::<LitStr>)?;
            let path = lit.parse::<syn::Path>().map_err(|_| {
                syn::Error::new(
                    lit.span(),
                    "`crate` takes the path of a crate re-exporting messaging_core, as a \
                     string: `crate = \"my_facade\"` or `crate = \"my_facade::messaging\"`",
                )
            })?;
            set(&mut args.krate, respan(path, lit.span()))
        }
        Param::Retry => Err(syn::Error::new(
            Span::call_site(),
            "`retry` takes its settings in parentheses",
        )),
    }
}

/// `path` with every token at `span`, so that a path that does not resolve is reported at the
/// `crate = "…"` string.
fn respan(path: syn::Path, span: Span) -> syn::Path {
    let tokens: TokenStream = path
        .to_token_stream()
        .into_iter()
        .map(|mut tt| {
            tt.set_span(span);
            tt
        })
        .collect();
    syn::parse2(tokens).expect("a path re-parses")
}

/// The one check for repeated keys, made before the value is looked at so that a key given
/// twice is reported even when its first value was rejected.
fn first_time(
    seen: &mut Vec<(Param, bool)>,
    key: Param,
    grouped: bool,
    key_span: Span,
) -> syn::Result<()> {
    let written = |grouped: bool| match RETRY_GROUP.iter().find(|(_, k)| *k == key) {
        Some((name, _)) if grouped => format!("retry({name} = …)"),
        _ => key.name().to_owned(),
    };
    if let Some(&(_, before)) = seen.iter().find(|(k, _)| *k == key) {
        let message = if before == grouped {
            format!("`{}` is given twice; keep one of them", written(grouped))
        } else {
            format!(
                "`{}` and `{}` set the same thing; keep one of them",
                written(before),
                written(grouped)
            )
        };
        return Err(syn::Error::new(key_span, message));
    }
    seen.push((key, grouped));
    Ok(())
}

fn set<T>(slot: &mut Option<T>, value: T) -> syn::Result<()> {
    *slot = Some(value);
    Ok(())
}

/// Parses `value` with `parse`, replacing syn's generic message by one that names the key.
fn parse_or<T>(
    value: TokenStream,
    key: Param,
    what: &str,
    parse: impl FnOnce(TokenStream) -> syn::Result<T>,
) -> syn::Result<T> {
    parse(value.clone()).map_err(|_| {
        syn::Error::new_spanned(
            value,
            format!("`{}` takes {what}: `{}`", key.name(), key.example()),
        )
    })
}

fn non_empty_str(key: Param, value: TokenStream) -> syn::Result<LitStr> {
    let lit = parse_or(value, key, "a string", syn::parse2::<LitStr>)?;
    if lit.value().trim().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{}` cannot be empty: `{}`", key.name(), key.example()),
        ));
    }
    Ok(lit)
}

/// A topic name: not empty, no white space (brokers reject or mangle both).
fn check_topic(key: Param, lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    if name.trim().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format!("a topic name cannot be empty: `{}`", key.example()),
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "topic `{name}` contains white space, which brokers do not accept in topic names"
            ),
        ));
    }
    Ok(())
}

/// One topic: a string literal or a `const` path.
fn parse_topic(input: ParseStream<'_>) -> syn::Result<Topic> {
    if input.peek(LitStr) {
        return input.parse().map(Topic::Lit);
    }
    input.parse().map(Topic::Const)
}

/// `"t"`, `CONST` or `["a", B]`: at least one topic, no literal empty, none repeated.
fn parse_topics(key: Param, value: TokenStream) -> syn::Result<Spanned<Vec<Topic>>> {
    let parse = |input: ParseStream<'_>| -> syn::Result<(Vec<Topic>, Span)> {
        if !input.peek(syn::token::Bracket) {
            let topic = parse_topic(input)?;
            let span = topic.span();
            return Ok((vec![topic], span));
        }
        let content;
        let bracket = syn::bracketed!(content in input);
        let list = content.parse_terminated(parse_topic, Token![,])?;
        Ok((list.into_iter().collect(), bracket.span.join()))
    };
    let what = "a string, the path of a `const` of type `&str`, or an array of them";
    let (topics, list_span) = parse_or(value, key, what, |v| parse.parse2(v))?;
    if topics.is_empty() {
        return Err(syn::Error::new(
            list_span,
            format!(
                "`{} = []` names no topic; give at least one: `{} = [\"orders.created\"]`",
                key.name(),
                key.name()
            ),
        ));
    }
    let mut errors = Errors::default();
    for (i, topic) in topics.iter().enumerate() {
        if let Topic::Lit(lit) = topic
            && let Err(error) = check_topic(key, lit)
        {
            errors.push(error);
        } else if topics[..i].iter().any(|t| t.written() == topic.written()) {
            errors.push(syn::Error::new(
                topic.span(),
                format!(
                    "topic `{}` is listed twice",
                    topic.written().trim_matches('"')
                ),
            ));
        }
    }
    errors.finish()?;
    Ok(Spanned {
        value: topics,
        span: list_span,
    })
}

fn parse_retries(value: TokenStream) -> syn::Result<Spanned<u32>> {
    let message = "`max_retries` must be a non-negative integer (retries after the first attempt), \
                   e.g. `max_retries = 3`; `max_retries = 0` disables retries";
    let lit = syn::parse2::<LitInt>(value.clone())
        .map_err(|_| syn::Error::new_spanned(&value, message))?;
    // syn accepts `-1` as one literal.
    if lit.base10_digits().starts_with('-') {
        return Err(syn::Error::new_spanned(&value, message));
    }
    let retries = lit.base10_parse::<u32>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!("`max_retries` must fit in a u32 (0 to {})", u32::MAX),
        )
    })?;
    if !matches!(lit.suffix(), "" | "u8" | "u16" | "u32" | "u64" | "usize") {
        return Err(syn::Error::new(lit.span(), message));
    }
    Ok(Spanned {
        value: retries,
        span: lit.span(),
    })
}

fn parse_duration(key: Param, value: TokenStream) -> syn::Result<Spanned<Duration>> {
    let fix = format!(
        "`{}` takes a duration string with a unit, such as \"5s\", \"250ms\" or \"1m 30s\"",
        key.name()
    );
    let lit = match syn::parse2::<syn::Lit>(value.clone()) {
        Ok(syn::Lit::Str(lit)) => lit,
        Ok(syn::Lit::Int(int)) => {
            return Err(syn::Error::new(
                int.span(),
                format!(
                    "{fix}: write `{} = \"{}s\"` for seconds",
                    key.name(),
                    int.base10_digits()
                ),
            ));
        }
        _ => return Err(syn::Error::new_spanned(value, fix)),
    };
    let duration = humantime::parse_duration(&lit.value())
        .map_err(|error| syn::Error::new(lit.span(), format!("{fix} ({error})")))?;
    if duration.as_nanos() > u128::from(u64::MAX) {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{}` is too long", key.name()),
        ));
    }
    Ok(Spanned {
        value: duration,
        span: lit.span(),
    })
}

fn parse_backoff(value: TokenStream) -> syn::Result<Spanned<Backoff>> {
    let key = Param::Backoff;
    let lit = parse_or(value, key, "a string", syn::parse2::<LitStr>)?;
    let backoff = match lit.value().as_str() {
        "constant" => Backoff::Constant,
        "linear" => Backoff::Linear,
        "exponential" => Backoff::Exponential,
        other => {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "unknown backoff `{other}`; expected one of: \"constant\" (the default), \
                     \"linear\", \"exponential\""
                ),
            ));
        }
    };
    Ok(Spanned {
        value: backoff,
        span: lit.span(),
    })
}

fn parse_schema(value: TokenStream) -> syn::Result<Type> {
    if let Ok(lit) = syn::parse2::<LitStr>(value.clone()) {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`schema` takes a type, not a string: `schema = {}`",
                lit.value()
            ),
        ));
    }
    let ty = parse_or(value, Param::Schema, "a type", syn::parse2::<Type>)?;
    match &ty {
        Type::Path(_) => Ok(ty),
        _ => Err(syn::Error::new_spanned(
            ty.to_token_stream(),
            "`schema` takes a type path that implements `serde::Deserialize`: `schema = OrderCreated`",
        )),
    }
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn handler(tokens: TokenStream) -> syn::Result<Args> {
        parse_args(
            tokens,
            "message_handler",
            MESSAGE_HANDLER_KEYS,
            Leading::None,
        )
    }

    fn messages(result: syn::Result<Args>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn parses_every_handler_key() {
        let args = handler(quote!(
            topic = ["a", "b"],
            group = "g",
            max_retries = 2,
            retry_delay = "250ms",
            backoff = "linear",
            max_delay = "1m",
            timeout = "2s",
            dlq = "d",
            schema = a::B
        ))
        .unwrap();
        let topics: Vec<_> = args
            .topics
            .unwrap()
            .value
            .iter()
            .map(Topic::written)
            .collect();
        assert_eq!(topics, ["\"a\"", "\"b\""]);
        assert_eq!(args.retry.max_retries.unwrap().value, 2);
        assert_eq!(
            args.retry.retry_delay.unwrap().value,
            Duration::from_millis(250)
        );
        assert_eq!(args.retry.backoff.unwrap().value, Backoff::Linear);
        assert_eq!(args.retry.max_delay.unwrap().value, Duration::from_secs(60));
        assert_eq!(args.retry.timeout.unwrap().value, Duration::from_secs(2));
        assert_eq!(args.retry.dlq.unwrap().value(), "d");
        assert!(args.schema.is_some());
    }

    #[test]
    fn reports_every_bad_key_at_once() {
        let errors = messages(handler(quote!(
            topic = "",
            max_retries = -1,
            colour = "red",
            retry_delay = "soon",
            topic = "x"
        )));
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].contains("cannot be empty"));
        assert!(errors[1].contains("non-negative integer"));
        assert!(errors[2].contains("unknown key `colour`") && errors[2].contains("`retry_delay`"));
        assert!(errors[3].contains("duration"));
        assert!(errors[4].contains("given twice"));
        let errors = messages(handler(quote!(topic = "a", topic = "b")));
        assert_eq!(errors, ["`topic` is given twice; keep one of them"]);
    }

    #[test]
    fn suggests_the_nearest_key() {
        let errors = messages(handler(quote!(topics = ["a"], max_retry = 1)));
        assert!(errors[0].contains("did you mean `topic`"), "{errors:?}");
        assert!(
            errors[1].contains("did you mean `max_retries`"),
            "{errors:?}"
        );
    }

    #[test]
    fn retry_groups_the_retry_keys() {
        let args = handler(quote!(
            topic = C,
            retry(
                max = 2,
                delay = "250ms",
                backoff = "linear",
                max_delay = "1m",
                timeout = "2s"
            ),
            crate = "facade::inner"
        ))
        .unwrap();
        assert_eq!(args.krate().to_string(), "facade :: inner");
        assert_eq!(args.retry.max_retries.unwrap().value, 2);
        assert_eq!(
            args.retry.retry_delay.unwrap().value,
            Duration::from_millis(250)
        );
        assert_eq!(args.retry.backoff.unwrap().value, Backoff::Linear);
        assert_eq!(args.retry.max_delay.unwrap().value, Duration::from_secs(60));
        assert_eq!(args.retry.timeout.unwrap().value, Duration::from_secs(2));
        assert!(matches!(
            &args.topics.as_ref().unwrap().value[..],
            [Topic::Const(_)]
        ));
        let errors = messages(handler(quote!(
            topic = "t",
            retry(max = 1),
            max_retries = 2
        )));
        assert_eq!(
            errors,
            ["`retry(max = …)` and `max_retries` set the same thing; keep one of them"]
        );
        let errors = messages(handler(quote!(topic = "t", retry = 3)));
        assert!(errors[0].contains("`max_retries = 3`"), "{errors:?}");
        assert!(errors[0].contains("`retry(max = 3)`"), "{errors:?}");
    }

    #[test]
    fn a_missing_comma_is_named() {
        let errors = messages(handler(quote!(topic = "a" group = "b")));
        assert_eq!(
            errors,
            ["expected `,` before `group`: keys are separated by commas"]
        );
    }

    #[test]
    fn leading_name_is_required_when_asked_for() {
        let parse = |t| {
            parse_args(
                t,
                "event",
                EVENT_KEYS,
                Leading::EventName {
                    example: "x",
                    attribute: TokenStream::new(),
                    required: true,
                },
            )
        };
        let args = parse(quote!("user.created", topic = "t", include_result = false)).unwrap();
        assert_eq!(args.name.unwrap().value(), "user.created");
        assert!(!args.include_result.unwrap().value);
        let errors = messages(parse(quote!(topic = "t")));
        assert!(
            errors[0].contains("needs the event name first"),
            "{errors:?}"
        );
    }
}
