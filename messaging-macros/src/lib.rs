//! Attribute macros of `messaging`; use them through `messaging_core` (`use
//! messaging_core::prelude::*`), which re-exports them and holds what their code calls.

mod attr;
mod consumer;
mod errors;
mod event;
mod message_handler;
mod registration;
mod signature;

use proc_macro::TokenStream;

/// Message handler TODO docs
#[proc_macro_attribute]
pub fn message_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    message_handler::expand(attr.into(), item.into()).into()
}

/// consumer TODO docs
#[proc_macro_attribute]
pub fn consumer(attr: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand(attr.into(), item.into()).into()
}

/// on_event TODO docs
#[proc_macro_attribute]
pub fn on_event(_attr: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand_on_event(item.into()).into()
}

/// event TODO docs
#[proc_macro_attribute]
pub fn event(attr: TokenStream, item: TokenStream) -> TokenStream {
    event::expand(attr.into(), item.into()).into()
}
