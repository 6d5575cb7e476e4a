//! `#[consumer]` on an inherent impl: each `#[on_event("name")]` method becomes one
//! registration of the consumer's group and topics; the `#[on_event]` attributes are removed
//! and the other methods are left alone. `#[on_event]` expanding on its own is an error.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, ImplItem, Item, ItemImpl, LitStr, Meta, Type};

use crate::attr::{self, Args, Leading};
use crate::errors::{Errors, with_item};
use crate::registration::{Kind, Registration};
use crate::signature::{self, HandlerSig, Place};

const ON_EVENT_EXAMPLE: &str = r#"#[on_event("user.created")]"#;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = errors.keep(attr::parse_args(
        attr,
        "consumer",
        attr::CONSUMER_KEYS,
        Leading::None,
    ));
    if let Some(args) = &args
        && args.topics.is_none()
    {
        errors.push(syn::Error::new(
            Span::call_site(),
            "#[consumer] needs the topics its events arrive on: \
             `#[consumer(group = \"order-service\", topics = [\"user-events\"])]`",
        ));
    }
    let mut item_impl = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(item_impl)) => item_impl,
        parsed => {
            let span = parsed.map_or_else(|_| Span::call_site(), |item| item.span());
            errors.push(syn::Error::new(
                span,
                "#[consumer] goes on an inherent impl block, `impl OrderEvents { … }`, whose \
                 `async fn`s carry #[on_event(\"event.name\")]; for a free function use \
                 #[message_handler]",
            ));
            return with_item(item, errors.finish().expect_err("an error was pushed"));
        }
    };
    // Taken out first, so that on any error the impl is emitted without them and they do not
    // add their own "outside a #[consumer]" errors.
    let methods = take_on_event_attributes(&mut item_impl, &mut errors);
    check_impl(&item_impl, &mut errors);
    // With a broken attribute, the methods are still checked (the code made from the
    // defaults is then thrown away with the errors).
    let args = args.unwrap_or_default();
    let registrations = registrations(&item_impl, &args, &methods, &mut errors);
    let generated = match errors.finish() {
        Ok(()) => quote!(#(#registrations)*),
        Err(error) => error.into_compile_error(),
    };
    quote! {
        #item_impl
        #generated
    }
}

/// One `#[on_event]` method: its index among the impl items, its attribute, and the
/// attribute's arguments (`None` when they were rejected, which is reported already).
struct OnEvent {
    index: usize,
    attr: Attribute,
    args: Option<Args>,
}

fn take_on_event_attributes(item_impl: &mut ItemImpl, errors: &mut Errors) -> Vec<OnEvent> {
    let mut methods = Vec::new();
    for (index, item) in item_impl.items.iter_mut().enumerate() {
        let ImplItem::Fn(method) = item else {
            continue;
        };
        let (on_event, others): (Vec<Attribute>, Vec<Attribute>) =
            method.attrs.drain(..).partition(is_on_event);
        method.attrs = others;
        for (i, attr) in on_event.iter().enumerate() {
            if i > 0 {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "a method handles one event name, so it takes one #[on_event]; write a \
                     second method that calls this one",
                ));
                continue;
            }
            // A method whose attribute is broken is still checked.
            methods.push(OnEvent {
                index,
                attr: attr.clone(),
                args: errors.keep(on_event_args(attr)),
            });
        }
    }
    methods
}

fn is_on_event(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "on_event")
}

fn on_event_args(attr: &Attribute) -> syn::Result<Args> {
    let tokens = match &attr.meta {
        Meta::List(list) => list.tokens.clone(),
        // The name then comes from the payload's `TypedEvent` impl.
        Meta::Path(_) => return Ok(Args::default()),
        Meta::NameValue(_) => {
            return Err(syn::Error::new_spanned(
                attr,
                format!("write the event name in parentheses: `{ON_EVENT_EXAMPLE}`"),
            ));
        }
    };
    attr::parse_args(
        tokens,
        "on_event",
        attr::ON_EVENT_KEYS,
        Leading::EventName {
            example: ON_EVENT_EXAMPLE,
            attribute: attr.to_token_stream(),
            required: false,
        },
    )
}

fn check_impl(item_impl: &ItemImpl, errors: &mut Errors) {
    let ty = signature::type_string(&item_impl.self_ty);
    if let Some((_, path, _)) = &item_impl.trait_ {
        errors.push(syn::Error::new_spanned(
            path,
            format!(
                "#[consumer] goes on an inherent impl, `impl {ty} {{ … }}`, not on a trait impl; \
                 move the #[on_event] methods into an inherent impl block"
            ),
        ));
    }
    if !item_impl.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &item_impl.generics,
            "generic consumers are not supported: a #[consumer] is registered once, at link \
             time, so its type must be concrete",
        ));
    }
}

fn registrations(
    item_impl: &ItemImpl,
    args: &Args,
    methods: &[OnEvent],
    errors: &mut Errors,
) -> Vec<TokenStream> {
    let self_ty: &Type = &item_impl.self_ty;
    if methods.is_empty() {
        errors.push(syn::Error::new(
            self_ty.span(),
            format!(
                "this #[consumer] registers nothing: mark the methods that handle events with \
                 `{ON_EVENT_EXAMPLE}`"
            ),
        ));
        return Vec::new();
    }
    let type_name = type_name(self_ty);
    let krate = args.krate();
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| LitStr::new(&type_name, self_ty.span()));
    let envelope = match (&args.name_field, &args.data_field) {
        (None, None) => None,
        (name, data) => Some((
            name.clone()
                .unwrap_or_else(|| LitStr::new("name", Span::call_site())),
            data.clone()
                .unwrap_or_else(|| LitStr::new("data", Span::call_site())),
        )),
    };
    let topics = args
        .topics
        .as_ref()
        .map(|t| t.value.clone())
        .unwrap_or_default();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for method in methods {
        let ImplItem::Fn(function) = &item_impl.items[method.index] else {
            continue;
        };
        let sig = errors.keep(signature::analyze(
            &function.sig,
            &Place::Method { self_ty },
        ));
        let (Some(method_args), Some(sig)) = (&method.args, sig) else {
            continue;
        };
        let method_name = function.sig.ident.to_string();
        let (event_name, shown) = event_name(&method.attr, method_args, &sig, &krate);
        if let Some((_, first)) = seen.iter().find(|(name, _)| *name == shown) {
            errors.push(syn::Error::new_spanned(
                &method.attr,
                format!(
                    "event `{shown}` is already handled by `{first}` in this consumer; one \
                     method per event name"
                ),
            ));
            continue;
        }
        seen.push((shown, method_name.clone()));
        if let Some(error) = crate::registration::publish_needs_output(method_args, &sig) {
            errors.push(error);
            continue;
        }
        let registration = Registration {
            name: format!("{type_name}::{method_name}"),
            sig: &sig,
            kind: Kind::OnEvent {
                self_ty,
                event_name: &event_name,
            },
            topics: &topics,
            group: Some(group.clone()),
            envelope: envelope.clone(),
            retry: method_args.retry.or(&args.retry),
            schema: None,
            krate: krate.clone(),
            publish_to: method_args.publish_to.as_ref(),
        };
        out.push(registration.expand());
    }
    out
}

/// The event name expression of a method and how to show it: the attribute's string, or
/// `<P as NamedEvent>::NAME` for a bare `#[on_event]` (implemented for `Event<T>` with
/// `T: TypedEvent`; any other first argument is reported by the type checker, with the fix).
fn event_name(
    attr: &Attribute,
    args: &Args,
    sig: &HandlerSig,
    krate: &TokenStream,
) -> (TokenStream, String) {
    if let Some(name) = &args.name {
        return (quote!(#name), name.value());
    }
    let payload = &sig.payload.ty;
    // Spanned at the attribute: the fix is to name the event there.
    let span = attr.span();
    let name = quote_spanned!(span=> <#payload as #krate::__private::NamedEvent>::NAME);
    (
        name,
        format!("<{} as NamedEvent>::NAME", signature::type_string(payload)),
    )
}

/// `OrderEvents` for `OrderEvents` or `crate::events::OrderEvents`.
fn type_name(ty: &Type) -> String {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .map_or_else(|| signature::type_string(ty), |s| s.ident.to_string()),
        _ => signature::type_string(ty),
    }
}

/// `#[on_event]` expanding by itself: it was not inside a `#[consumer]` impl (which would
/// have removed it).
pub(crate) fn expand_on_event(item: TokenStream) -> TokenStream {
    with_item(
        item,
        syn::Error::new(
            Span::call_site(),
            "#[on_event] can only be used on a method inside a #[consumer] impl; put \
             #[consumer(topics = [\"…\"])] on the impl block that holds this method",
        ),
    )
}
