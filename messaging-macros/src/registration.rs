//! The code shared by `#[message_handler]` and `#[on_event]`: the erased call function, the
//! spanned type checks and the `inventory` registration, all inside `const _: () = { … };`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{LitStr, Type};

use crate::attr::{Backoff, RetryArgs};
use crate::signature::{HandlerSig, PayloadKind};

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
    pub topics: &'a [LitStr],
    pub group: Option<LitStr>,
    /// The foreign envelope fields (name, data); `None` for the standard envelope.
    pub envelope: Option<(LitStr, LitStr)>,
    pub retry: RetryArgs,
    pub schema: Option<&'a Type>,
}

impl Registration<'_> {
    pub(crate) fn expand(&self) -> TokenStream {
        let call = self.call();
        let registration = self.registration();
        let envelope = match &self.envelope {
            Some((name, data)) => quote! {
                ::messaging_core::__private::EnvelopeFields { name: #name, data: #data }
            },
            None => quote!(::messaging_core::__private::EnvelopeFields::STANDARD),
        };
        quote! {
            const _: () = {
                const __MESSAGING_ENVELOPE: ::messaging_core::__private::EnvelopeFields = #envelope;
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
        let payload_ty = &sig.payload.ty;
        let decode = match &sig.payload.kind {
            PayloadKind::Event(inner) => quote_spanned! {inner.span()=>
                <#inner as ::messaging_core::__private::JsonPayload>::decode_envelope(
                    &__inv.message,
                    &__MESSAGING_ENVELOPE,
                )?
            },
            PayloadKind::Bytes => quote!(::messaging_core::__private::decode_bytes(&__inv)),
            PayloadKind::Vec => quote!(::messaging_core::__private::decode_vec(&__inv)),
            PayloadKind::Message => quote!(::messaging_core::__private::decode_message(&__inv)),
            PayloadKind::Json => quote_spanned! {payload_ty.span()=>
                <#payload_ty as ::messaging_core::__private::JsonPayload>::decode_payload(&__inv.message)?
            },
        };
        // The body (for `Event<T>`: the envelope's data) must also decode as the schema type,
        // unless that is the type decoded anyway.
        let schema_check = self.schema.and_then(|schema| match &sig.payload.kind {
            PayloadKind::Event(inner) if !same_type(schema, inner) => Some(quote_spanned! {schema.span()=>
                <#schema as ::messaging_core::__private::JsonPayload>::decode_envelope(
                    &__inv.message,
                    &__MESSAGING_ENVELOPE,
                )
                .map(::core::mem::drop)?;
            }),
            PayloadKind::Event(_) => None,
            _ if same_type(schema, payload_ty) => None,
            _ => Some(quote_spanned! {schema.span()=>
                <#schema as ::messaging_core::__private::JsonPayload>::decode_payload(&__inv.message)
                    .map(::core::mem::drop)?;
            }),
        });
        let args: Vec<_> = (0..sig.extractors.len())
            .map(|i| quote::format_ident!("__arg{}", i))
            .collect();
        let extract = sig.extractors.iter().zip(&args).map(|(ty, arg)| {
            quote_spanned! {ty.span()=>
                let #arg = <#ty as ::messaging_core::__private::FromContext>::from_context(&__inv)?;
            }
        });
        let ident = &sig.ident;
        let (this, this_value, callee) = match self.kind {
            Kind::MessageHandler => (None, None, quote!(#ident)),
            Kind::OnEvent { self_ty, .. } => (
                Some(quote_spanned! {self_ty.span()=>
                    let __this = <#self_ty as ::messaging_core::__private::ConsumerType>::instance(&__inv)?;
                }),
                Some(quote!(__this,)),
                quote!(__this.#ident),
            ),
        };
        // Through the declared type, so that an unsupported one is reported where it is written.
        let into_result = match &sig.output {
            Some(output) => quote_spanned! {output.span()=>
                <#output as ::messaging_core::__private::HandlerReturn>::into_handler_result(__result)
            },
            None => quote!(
                ::messaging_core::__private::IntoHandlerResult::into_handler_result(__result)
            ),
        };
        // Spanned at the function's name: a future that is not `Send` is reported there.
        let body = quote_spanned! {ident.span()=>
            let __taken = (|| -> ::core::result::Result<_, ::messaging_core::HandlerError> {
                #schema_check
                let __payload = #decode;
                #(#extract)*
                #this
                ::core::result::Result::Ok((#this_value __payload #(, #args)*))
            })();
            match __taken {
                ::core::result::Result::Ok((#this_value __payload #(, #args)*)) => {
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
                __inv: &::messaging_core::__private::Invocation,
            ) -> ::messaging_core::__private::HandlerFuture {
                #body
            }
        }
    }

    /// The `inventory::submit!` of the `HandlerRegistration`.
    fn registration(&self) -> TokenStream {
        let sig = self.sig;
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
                        <#self_ty as ::messaging_core::__private::ConsumerType>::make_default
                    )
                },
            ),
        };
        let topics = self.topics;
        let group = option(self.group.as_ref().map(|g| quote!(#g)));
        let retry = retry_policy(&self.retry);
        let dlq = option(self.retry.dlq.as_ref().map(|d| quote!(#d)));
        let retry_topics = self.retry.retry_topics.as_ref().is_some_and(|b| b.value);
        let schema = option(self.schema.map(|s| quote!(::core::stringify!(#s))));
        let requires = sig.extractors.iter().map(|ty| {
            quote_spanned! {ty.span()=>
                <#ty as ::messaging_core::__private::FromContext>::requirement as fn() -> _
            }
        });
        quote! {
            ::messaging_core::__private::inventory::submit! {
                ::messaging_core::__private::HandlerRegistration {
                    name: #name,
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: #line,
                    kind: ::messaging_core::__private::HandlerKind::#kind,
                    topics: &[#(#topics),*],
                    group: #group,
                    event_name: #event_name,
                    envelope: __MESSAGING_ENVELOPE,
                    retry: #retry,
                    dlq: #dlq,
                    retry_topics: #retry_topics,
                    schema: #schema,
                    requires: &[#(#requires),*],
                    instance: #instance,
                    call: __messaging_call,
                }
            }
        }
    }
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
fn retry_policy(retry: &RetryArgs) -> TokenStream {
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
        fields.push(quote!(backoff: ::messaging_core::__private::Backoff::#variant,));
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
        .then(|| quote!(..::messaging_core::__private::RetryPolicy::DEFAULT));
    quote! {
        ::messaging_core::__private::RetryPolicy {
            #(#fields)*
            #rest
        }
    }
}

/// Whether two types are written the same (then `schema` adds no validation step).
fn same_type(a: &Type, b: &Type) -> bool {
    quote!(#a).to_string() == quote!(#b).to_string()
}
