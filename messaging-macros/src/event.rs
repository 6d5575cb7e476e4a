//! `#[event]` on an async HTTP handler returning `Result<T, E>`: the signature is kept (it stays
//! an axum handler) and the body is wrapped so that, once it produced `Ok(value)`, the event is
//! published in the background; `Err` publishes nothing.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, LitStr, Member, ReturnType, Type};

use crate::attr::{self, Leading};
use crate::errors::{Errors, with_item};

const EXAMPLE: &str = r#"#[event("user.created", topic = "user-events")]"#;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(attr, item.clone()) {
        Ok(generated) => generated,
        Err(error) => with_item(item, error),
    }
}

fn try_expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = errors.keep(attr::parse_args(
        attr,
        "event",
        attr::EVENT_KEYS,
        Leading::EventName {
            example: EXAMPLE,
            attribute: TokenStream::new(),
            required: true,
        },
    ));
    let topic = args.as_ref().and_then(|args| match &args.topics {
        None => {
            errors.push(syn::Error::new(
                Span::call_site(),
                format!("#[event] needs the topic to publish on: `{EXAMPLE}`"),
            ));
            None
        }
        Some(topics) if topics.value.len() > 1 => {
            errors.push(syn::Error::new(
                topics.span,
                "an event is published to one topic: `topic = \"user-events\"`",
            ));
            None
        }
        Some(topics) => topics.value.first().cloned(),
    });
    let function: ItemFn = match syn::parse2(item) {
        Ok(function) => function,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "#[event] goes on an `async fn` that returns `Result<T, E>`, such as an axum \
                 handler; the event is published with its `Ok` value",
            ));
            return Err(errors.finish().expect_err("an error was pushed"));
        }
    };
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!(
                "#[event] goes on an `async fn`: write `async fn {}(…)`",
                sig.ident
            ),
        ));
    }
    let output = errors.keep(result_type(&function));
    errors.finish()?;
    let (Some(args), Some(topic), Some(output)) = (args, topic, output) else {
        return Err(syn::Error::new(Span::call_site(), "invalid #[event]"));
    };
    let Some(name) = &args.name else {
        return Err(syn::Error::new(Span::call_site(), "missing event name"));
    };

    let krate = args.krate();
    let include_result = args.include_result.is_none_or(|b| b.value);
    let key_field = match &args.key_field {
        Some(field) => quote!(::core::option::Option::Some(#field)),
        None => quote!(::core::option::Option::None),
    };
    // The key is read from the data's field itself, so that a field the data type lacks is a
    // compile error at `key_field` (listing the fields it has), and a field renamed by serde
    // still gives its value.
    let key = match &args.key_field {
        Some(field) => {
            let member = field_member(field)?;
            quote_spanned! {field.span()=>
                {
                    use #krate::__private::event_key::*;
                    #krate::__private::event_key(
                        &(&&KeyOf(__messaging_ok)).__messaging_data().#member,
                    )
                }
            }
        }
        None => quote!(::core::option::Option::None),
    };
    // The idempotency key likewise, from its own field.
    let idempotency_key = match &args.idempotency_key {
        Some(field) => {
            let member = field_member_of(field, "idempotency_key", "order_id")?;
            quote_spanned! {field.span()=>
                {
                    use #krate::__private::event_key::*;
                    #krate::__private::event_key(
                        &(&&KeyOf(__messaging_ok)).__messaging_data().#member,
                    )
                }
            }
        }
        None => quote!(::core::option::Option::None),
    };
    // The data is needed for the envelope only; without it, the `Ok` value does not even have
    // to be serializable.
    let data = if include_result {
        quote_spanned! {output.span()=>
            {
                use #krate::__private::event_data::*;
                (&#krate::__private::EventData(__messaging_ok)).to_event_data()
            }
        }
    } else {
        quote! {
            ::core::result::Result::Ok(#krate::__private::serde_json::Value::Null)
        }
    };
    let (topic_items, topic) =
        crate::registration::topic_values(&krate, std::slice::from_ref(&topic));
    let registration = registration(&krate, &function, &output, include_result);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = &function;
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            const __MESSAGING_EVENT: #krate::__private::EventSpec =
                #krate::__private::EventSpec {
                    name: #name,
                    topic: #(#topic)*,
                    key_field: #key_field,
                    include_result: #include_result,
                };
            #topic_items
            #registration
            // The body runs as it was written (`?` and `return` included) ...
            let __messaging_result: #output = async move #block.await;
            // ... and only its `Ok` value is published.
            if let ::core::result::Result::Ok(__messaging_ok) = &__messaging_result {
                let __messaging_key = #key;
                let __messaging_idempotency_key = #idempotency_key;
                let __messaging_data = #data;
                #krate::__private::emit_event_with(
                    &__MESSAGING_EVENT,
                    __messaging_data,
                    __messaging_key,
                    __messaging_idempotency_key,
                );
            }
            __messaging_result
        }
    })
}

/// The `inventory` registration of the event, for the AsyncAPI document: its name, topic and
/// function, and the schema of its data when the data's type has one (see
/// `__private::schema_of`). It sits in the function's body, beside `__MESSAGING_EVENT`, so it
/// cannot name the function's generic parameters or `Self`: such a function's data has no
/// schema.
fn registration(
    krate: &TokenStream,
    function: &ItemFn,
    output: &Type,
    include_result: bool,
) -> TokenStream {
    let ident = &function.sig.ident;
    let outer_names = !function.sig.generics.params.is_empty() || mentions_self(quote!(#output));
    let schema = if include_result && !outer_names {
        quote! {
            // The traits that exist with the enabled features.
            #[allow(unused_imports)]
            use #krate::__private::schema_of::*;
            (&&&#krate::__private::schema_of::ok_of(::core::marker::PhantomData::<#output>))
                .__messaging_schema()
        }
    } else {
        quote!(::core::option::Option::None)
    };
    quote! {
        const _: () = {
            fn __messaging_schema()
            -> ::core::option::Option<#krate::__private::serde_json::Value> {
                #schema
            }

            #krate::__private::inventory::submit! {
                #krate::__private::EventRegistration {
                    name: __MESSAGING_EVENT.name,
                    topic: __MESSAGING_EVENT.topic,
                    source: #krate::__private::EventSource::Function(::core::stringify!(#ident)),
                    module_path: ::core::module_path!(),
                    key_field: __MESSAGING_EVENT.key_field,
                    schema: __messaging_schema,
                }
            }
        };
    }
}

fn mentions_self(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => ident == "Self",
        TokenTree::Group(group) => mentions_self(group.stream()),
        _ => false,
    })
}

/// The field named by `key_field = "…"`, as a member expression at the string's span: an
/// identifier (a keyword as a raw one, `r#type`) or a tuple index (`"0"`).
fn field_member(field: &LitStr) -> syn::Result<Member> {
    field_member_of(field, "key_field", "id")
}

/// The field named by `key = "…"` (`key_field`, `idempotency_key`); `example` is a field
/// name for the error message.
fn field_member_of(field: &LitStr, key: &str, example: &str) -> syn::Result<Member> {
    let name = field.value();
    let member = syn::parse_str::<Member>(&name)
        .or_else(|_| syn::parse_str::<Member>(&format!("r#{name}")))
        .map_err(|_| {
            syn::Error::new(
                field.span(),
                format!(
                    "`{key}` names a field of the data type as written in Rust, e.g. \
                     `{key} = \"{example}\"`; `{name}` is not a field name"
                ),
            )
        })?;
    Ok(match member {
        Member::Named(mut ident) => {
            ident.set_span(field.span());
            Member::Named(ident)
        }
        Member::Unnamed(index) => Member::Unnamed(syn::Index {
            index: index.index,
            span: field.span(),
        }),
    })
}

/// The declared `Result<T, E>` (any path whose last segment ends in `Result`, so aliases such
/// as `anyhow::Result<T>` or `ApiResult<T>` work).
fn result_type(function: &ItemFn) -> syn::Result<Type> {
    let fix = "#[event] publishes the `Ok` value of the handler, so it must return \
               `Result<T, E>`, e.g. `Result<Json<UserOut>, ApiError>`";
    let ty = match &function.sig.output {
        ReturnType::Default => {
            return Err(syn::Error::new(
                function.sig.paren_token.span.close(),
                format!("{fix}; add `-> Result<…, …>`"),
            ));
        }
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let is_result = match &ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident.to_string().ends_with("Result")),
        _ => false,
    };
    if !is_result {
        return Err(syn::Error::new_spanned(&ty, fix));
    }
    if let Some(span) = find_impl(quote!(#ty)) {
        return Err(syn::Error::new(
            span,
            "#[event] needs the concrete `Ok` type to serialize it as the event data; \
             `impl Trait` hides it, so name the type (e.g. `Json<UserOut>`)",
        ));
    }
    Ok(ty)
}

fn find_impl(tokens: TokenStream) -> Option<Span> {
    tokens.into_iter().find_map(|tt| match tt {
        TokenTree::Ident(ident) if ident == "impl" => Some(ident.span()),
        TokenTree::Group(group) => find_impl(group.stream()),
        _ => None,
    })
}
