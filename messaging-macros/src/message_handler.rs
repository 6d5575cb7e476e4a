//! `#[message_handler]`: registers a free async function for every message of its topics.

use proc_macro2::{Span, TokenStream};
use syn::ItemFn;

use crate::attr::{self, Leading};
use crate::errors::{Errors, with_item};
use crate::registration::{Kind, Registration};
use crate::signature::{self, Place};

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
        "message_handler",
        attr::MESSAGE_HANDLER_KEYS,
        Leading::None,
    ));
    if let Some(args) = &args
        && args.topics.is_none()
    {
        errors.push(syn::Error::new(
            Span::call_site(),
            "#[message_handler] needs the topic(s) it consumes: \
             `#[message_handler(topic = \"orders.created\")]` or \
             `#[message_handler(topic = [\"orders.created\", \"orders.updated\"])]`",
        ));
    }
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "#[message_handler] goes on an `async fn`; for a type with one method per event \
                 name, put #[consumer] on its `impl` block",
            ));
            return Err(errors.finish().expect_err("an error was pushed"));
        }
    };
    let sig = errors.keep(signature::analyze(&function.sig, &Place::Free));
    errors.finish()?;
    let (Some(args), Some(sig)) = (args, sig) else {
        return Err(syn::Error::new(
            Span::call_site(),
            "invalid #[message_handler]",
        ));
    };
    if let Some(error) = crate::registration::publish_needs_output(&args, &sig) {
        return Err(error);
    }
    let krate = args.krate();
    let Some(topics) = args.topics.map(|t| t.value) else {
        return Err(syn::Error::new(Span::call_site(), "missing topic"));
    };
    let registration = Registration {
        name: sig.ident.to_string(),
        sig: &sig,
        kind: Kind::MessageHandler,
        topics: &topics,
        group: args.group,
        envelope: None,
        retry: args.retry,
        schema: args.schema.as_ref(),
        krate,
        publish_to: args.publish_to.as_ref(),
    };
    let generated = registration.expand();
    Ok(quote::quote! {
        #item
        #generated
    })
}
