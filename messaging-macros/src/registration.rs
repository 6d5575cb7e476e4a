//! The code shared by `#[message_handler]` and `#[on_event]`: the erased call function, the
//! spanned type checks and the `inventory` registration, all inside `const _: () = { … };`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{LitStr, Type};

use crate::attr::{Backoff, RetryArgs, Topic};
use crate::signature::HandlerSig;

/// Which macro made the registration.
pub(crate) enum Kind<'a> {
    MessageHandler,
    OnEvent {
        self_ty: &'a Type,
        /// A string literal or `<T as TypedEvent>::NAME`.
        event_name: &'a TokenStream,
    },
}

/// Everything a registration holds.
pub(crate) struct Registration<'a> {
    /// `process_payment` or `OrderEvents::on_paid`.
    pub name: String,
    pub sig: &'a HandlerSig,
    pub kind: Kind<'a>,
    pub topics: &'a [Topic],
    pub group: Option<LitStr>,
    /// The foreign envelope fields (name, data); `None` for the standard envelope.
    pub envelope: Option<(LitStr, LitStr)>,
    pub retry: RetryArgs,
    pub schema: Option<&'a Type>,
    /// The path of `messaging_core`: `::messaging_core`, or what `crate = "…"` says.
    pub krate: TokenStream,
    /// `publish_to`: where the `Ok` value is published.
    pub publish_to: Option<&'a Topic>,
}

impl Registration<'_> {
    pub(crate) fn expand(&self) -> TokenStream {
        let krate = &self.krate;
        let call = self.call();
        let (topic_items, topics) = topic_values(krate, self.topics);
        let publish_item = self.publish_to.map(|topic| {
            let span = topic.span();
            quote_spanned! {span=>
                const __MESSAGING_PUBLISH_TO: &str = #topic;
                const _: () = #krate::__private::check_topic(__MESSAGING_PUBLISH_TO);
            }
        });
        let registration = self.registration(&topics);
        let envelope = match &self.envelope {
            Some((name, data)) => quote! {
                #krate::__private::EnvelopeFields { name: #name, data: #data }
            },
            None => quote!(#krate::__private::EnvelopeFields::STANDARD),
        };
        quote! {
            const _: () = {
                const __MESSAGING_ENVELOPE: #krate::__private::EnvelopeFields = #envelope;
                #topic_items
                #publish_item
                #call
                #registration
            };
        }
    }

    /// `fn(&Invocation) -> HandlerFuture`: decodes the payload and builds the extractors from
    /// the borrowed invocation, then returns the future that calls the user's function and
    /// converts its result (a failed decode or extractor: a ready error).
    fn call(&self) -> TokenStream {
        let sig = self.sig;
        let krate = &self.krate;
        let payload_ty = &sig.payload.ty;
        // The type decides: `FromMessage`, else JSON (see `__private::Decoder`); spanned at the
        // type, so that one that is neither is reported where it is written.
        let decode = quote_spanned! {payload_ty.span()=>
            (&&&#krate::__private::Decoder::<#payload_ty>::NEW)
                .__messaging_decode(&__inv.message, &__MESSAGING_ENVELOPE)?
        };
        // The body (for `Event<T>`: the envelope's data) must also decode as the schema type,
        // unless that is the type decoded anyway (see `__private::Schema`).
        let schema_check = self.schema.map(|schema| {
            quote_spanned! {schema.span()=>
                (&&&#krate::__private::Schema::<#payload_ty, #schema>::NEW)
                    .__messaging_check(&__inv.message, &__MESSAGING_ENVELOPE)?;
            }
        });
        let args: Vec<_> = (0..sig.extractors.len())
            .map(|i| quote::format_ident!("__arg{}", i))
            .collect();
        let extract = sig.extractors.iter().zip(&args).map(|(ty, arg)| {
            quote_spanned! {ty.span()=>
                let #arg = <#ty as #krate::__private::FromContext>::from_context(&__inv)?;
            }
        });
        let ident = &sig.ident;
        let (this, this_value, callee) = match self.kind {
            Kind::MessageHandler => (None, None, quote!(#ident)),
            Kind::OnEvent { self_ty, .. } => (
                Some(quote_spanned! {self_ty.span()=>
                    let __this = <#self_ty as #krate::__private::ConsumerType>::instance(&__inv)?;
                }),
                Some(quote!(__this,)),
                quote!(__this.#ident),
            ),
        };
        // Through the declared type, so that an unsupported one is reported where it is written.
        // A message that asks for a reply gets the `Ok` value (see `reply::by_type`).
        let reply = quote! {
            ::core::option::Option::Some(__responder) => {
                let __replying = {
                    #[allow(unused_imports)]
                    use #krate::__private::reply::{
                        ReplyNull as _, ReplySerialized as _, ReplyStreamed as _,
                    };
                    (&&&#krate::__private::reply::Output::new(__result))
                        .__messaging_reply(__responder)
                };
                __replying.await
            }
        };
        let into_result = match (&sig.output, self.publish_to) {
            (Some(output), None) => quote_spanned! {output.span()=>
                match __responder {
                    ::core::option::Option::None => {
                        <#output as #krate::__private::HandlerReturn>::into_handler_result(__result)
                    }
                    #reply
                }
            },
            (None, None) => quote! {
                match __responder {
                    ::core::option::Option::None => {
                        #krate::__private::IntoHandlerResult::into_handler_result(__result)
                    }
                    #reply
                }
            },
            // `publish_to` without a return type is refused by the macro before this.
            (output, Some(_)) => {
                let value = match output {
                    Some(output) => quote_spanned! {output.span()=>
                        <#output as #krate::__private::PublishedReturn>::into_value(__result)?
                    },
                    None => quote!(__result),
                };
                quote! {
                    async {
                        #[allow(unused_imports)]
                        use #krate::__private::event_name::{NameFromTopic as _, NameFromType as _};
                        let __value = #value;
                        let __name = (&&#krate::__private::event_name::NameOf(&__value))
                            .__messaging_event_name(__MESSAGING_PUBLISH_TO);
                        #krate::__private::publish_output(
                            &__producer, __name, &__value, __MESSAGING_PUBLISH_TO, __key,
                        )
                        .await
                    }
                    .await
                }
            }
        };
        // What publishing the result needs, taken before the handler's future borrows nothing.
        let publish_inputs = self.publish_to.map(|_| {
            quote! {
                let __producer =
                    <#krate::Producer as #krate::__private::FromContext>::from_context(&__inv)?;
                let __key = __inv.message.key.clone();
            }
        });
        let publish_names = match self.publish_to {
            Some(_) => quote!(__producer, __key,),
            None => quote!(__responder,),
        };
        let publish_inputs = match publish_inputs {
            Some(inputs) => inputs,
            None => quote! {
                let __responder = #krate::__private::reply::Responder::of(__inv);
            },
        };
        // Spanned at the function's name: a future that is not `Send` is reported there.
        let body = quote_spanned! {ident.span()=>
            let __taken = (|| -> ::core::result::Result<_, #krate::HandlerError> {
                // Unnamed, so that no name of the user's is shadowed; those that method
                // resolution does not pick are unused.
                #[allow(unused_imports)]
                use #krate::__private::decoders::{
                    SchemaIsEventData as _, SchemaIsPayload as _, SchemaOfBody as _,
                    SchemaOfEventData as _, ViaEvent as _, ViaFromMessage as _, ViaJson as _,
                };
                #schema_check
                let __payload = #decode;
                #(#extract)*
                #this
                #publish_inputs
                ::core::result::Result::Ok((#publish_names #this_value __payload #(, #args)*))
            })();
            match __taken {
                ::core::result::Result::Ok((#publish_names #this_value __payload #(, #args)*)) => {
                    ::std::boxed::Box::pin(async move {
                        let __result = #callee(__payload #(, #args)*).await;
                        #into_result
                    })
                }
                ::core::result::Result::Err(__error) => {
                    ::std::boxed::Box::pin(::core::future::ready(::core::result::Result::Err(__error)))
                }
            }
        };
        quote! {
            fn __messaging_call(
                __inv: &#krate::__private::Invocation,
            ) -> #krate::__private::HandlerFuture {
                #body
            }
        }
    }

    /// The `inventory::submit!` of the `HandlerRegistration`.
    fn registration(&self, topics: &[TokenStream]) -> TokenStream {
        let sig = self.sig;
        let krate = &self.krate;
        let name = &self.name;
        let line = quote_spanned!(sig.ident.span()=> ::core::line!());
        let (kind, event_name, instance) = match self.kind {
            Kind::MessageHandler => (
                quote!(MessageHandler),
                quote!(::core::option::Option::None),
                quote!(::core::option::Option::None),
            ),
            Kind::OnEvent {
                self_ty,
                event_name,
            } => (
                quote!(OnEvent),
                quote!(::core::option::Option::Some(#event_name)),
                quote_spanned! {self_ty.span()=>
                    ::core::option::Option::Some(
                        <#self_ty as #krate::__private::ConsumerType>::make_default
                    )
                },
            ),
        };
        let group = option(self.group.as_ref().map(|g| quote!(#g)));
        let retry = retry_policy(krate, &self.retry);
        let dlq = option(self.retry.dlq.as_ref().map(|d| quote!(#d)));
        let retry_topics = self.retry.retry_topics.as_ref().is_some_and(|b| b.value);
        let idempotent = self.retry.idempotent.as_ref().is_some_and(|b| b.value);
        let schema = option(self.schema.map(|s| quote!(::core::stringify!(#s))));
        let publish_to = option(self.publish_to.map(|_| quote!(__MESSAGING_PUBLISH_TO)));
        // The body's shape and schema, for the AsyncAPI document: by the payload type, the
        // `schema` type's schema first when it has one (see `__private::schema_of`).
        let payload_ty = &sig.payload.ty;
        let with_schema = self.schema.map(|schema| {
            quote! {
                let __payload = __payload.with_schema(
                    (&&&#krate::__private::schema_of::SchemaOf::<#schema>::NEW).__messaging_schema(),
                );
            }
        });
        let requires = sig.extractors.iter().map(|ty| {
            quote_spanned! {ty.span()=>
                <#ty as #krate::__private::FromContext>::requirement as fn() -> _
            }
        });
        quote! {
            fn __messaging_payload() -> #krate::__private::schema_of::PayloadSchema {
                // The traits that exist with the enabled features.
                #[allow(unused_imports)]
                use #krate::__private::schema_of::*;
                let __payload = (&&&#krate::__private::schema_of::SchemaOf::<#payload_ty>::NEW)
                    .__messaging_payload();
                #with_schema
                __payload
            }

            #krate::__private::inventory::submit! {
                #krate::__private::HandlerRegistration {
                    name: #name,
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: #line,
                    kind: #krate::__private::HandlerKind::#kind,
                    topics: &[#(#topics),*],
                    group: #group,
                    event_name: #event_name,
                    envelope: __MESSAGING_ENVELOPE,
                    retry: #retry,
                    dlq: #dlq,
                    retry_topics: #retry_topics,
                    idempotent: #idempotent,
                    schema: #schema,
                    publish_to: #publish_to,
                    requires: &[#(#requires),*],
                    instance: #instance,
                    payload: __messaging_payload,
                    call: __messaging_call,
                }
            }
        }
    }
}

/// `publish_to` on a handler that returns `()`: there is nothing to publish.
pub(crate) fn publish_needs_output(
    args: &crate::attr::Args,
    sig: &HandlerSig,
) -> Option<syn::Error> {
    let topic = args.publish_to.as_ref()?;
    sig.output.is_none().then(|| {
        syn::Error::new(
            topic.span(),
            "`publish_to` publishes the handler's `Ok` value, but this handler returns `()`: \
             return `Result<T, E>` with the event to publish as `T` (e.g. \
             `anyhow::Result<ContextAggregated>`)",
        )
    })
}

fn option(value: Option<TokenStream>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}

/// The number of fields of `messaging_core::RetryPolicy` (a new field without a key here makes
/// the generated literal fail to compile when every key is given, so it cannot go unnoticed).
const RETRY_POLICY_FIELDS: usize = 5;

/// The `RetryPolicy` literal: the keys given, the rest from `RetryPolicy::DEFAULT`, so the
/// defaults live in one place (the core).
fn retry_policy(krate: &TokenStream, retry: &RetryArgs) -> TokenStream {
    let duration = |d: std::time::Duration| {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        quote!(::core::time::Duration::from_nanos(#nanos))
    };
    let mut fields = Vec::new();
    if let Some(n) = &retry.max_retries {
        let n = n.value;
        fields.push(quote!(max_retries: #n,));
    }
    if let Some(d) = &retry.retry_delay {
        let d = duration(d.value);
        fields.push(quote!(retry_delay: #d,));
    }
    if let Some(b) = &retry.backoff {
        let variant = match b.value {
            Backoff::Constant => quote!(Constant),
            Backoff::Linear => quote!(Linear),
            Backoff::Exponential => quote!(Exponential),
        };
        fields.push(quote!(backoff: #krate::__private::Backoff::#variant,));
    }
    if let Some(d) = &retry.max_delay {
        let d = duration(d.value);
        fields.push(quote!(max_delay: #d,));
    }
    if let Some(d) = &retry.timeout {
        let d = duration(d.value);
        fields.push(quote!(timeout: ::core::option::Option::Some(#d),));
    }
    // With every field given, `..DEFAULT` would trip `clippy::needless_update` in user crates.
    let rest = (fields.len() < RETRY_POLICY_FIELDS)
        .then(|| quote!(..#krate::__private::RetryPolicy::DEFAULT));
    quote! {
        #krate::__private::RetryPolicy {
            #(#fields)*
            #rest
        }
    }
}

/// The topics as values, and the items they need: a literal as written; a `const` through a
/// `const` of type `&'static str` (a type error there names the expected type) that is
/// checked at compile time, as the macro checked the literals.
pub(crate) fn topic_values(
    krate: &TokenStream,
    topics: &[Topic],
) -> (TokenStream, Vec<TokenStream>) {
    let mut items = TokenStream::new();
    let values = topics
        .iter()
        .enumerate()
        .map(|(i, topic)| match topic {
            Topic::Const(path) => {
                let name = quote::format_ident!("__MESSAGING_TOPIC_{}", i);
                items.extend(quote_spanned! {path.span()=>
                    const #name: &str = #path;
                    const _: () = #krate::__private::check_topic(#name);
                });
                quote!(#name)
            }
            Topic::Lit(lit) => quote!(#lit),
        })
        .collect();
    (items, values)
}
