//! What a handler's signature says: the payload argument and how to decode it, the extractor
//! arguments, the return type. Every syntactic misuse is reported here, all at once; what
//! needs the type checker (is this an extractor?) is left to the spanned checks that
//! `registration.rs` emits.

use proc_macro2::{Group, Ident, TokenStream, TokenTree};
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{FnArg, ReturnType, Signature, Type};

use crate::errors::Errors;

/// The first argument. How it is decoded is left to the type checker (`FromMessage`, else
/// JSON; see `messaging_core::__private::Decoder`), never read from the type's name.
pub(crate) struct Payload {
    pub ty: Type,
}

/// A handler signature that passed the syntactic checks.
pub(crate) struct HandlerSig {
    pub ident: Ident,
    pub payload: Payload,
    /// The types of the further arguments.
    pub extractors: Vec<Type>,
    /// The declared return type; `None` for `()`.
    pub output: Option<Type>,
}

/// Where the function sits.
pub(crate) enum Place<'a> {
    /// A free function under `#[message_handler]`.
    Free,
    /// A method of a `#[consumer]` impl; `Self` in its types is replaced by this type,
    /// because the generated code lives outside the impl.
    Method { self_ty: &'a Type },
}

/// Checks `sig` and extracts what the generated code needs.
pub(crate) fn analyze(sig: &Signature, place: &Place<'_>) -> syn::Result<HandlerSig> {
    let mut errors = Errors::default();
    let what = match place {
        Place::Free => "a #[message_handler] function",
        Place::Method { .. } => "an #[on_event] method",
    };
    let name = &sig.ident;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!("{what} must be `async`: write `async fn {name}(…)`"),
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(
            constness.span,
            format!("{what} cannot be `const`"),
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(
            unsafety.span,
            format!("{what} cannot be `unsafe`: the runtime calls it for every message"),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            format!("{what} cannot declare an ABI"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let span = if sig.generics.params.is_empty() {
            sig.generics.where_clause.span()
        } else {
            sig.generics.span()
        };
        errors.push(syn::Error::new(
            span,
            format!(
                "generic handlers are not supported: {what} is registered once, at link time, \
                 so its argument types must be concrete; write a non-generic handler that calls \
                 the generic function with the types filled in"
            ),
        ));
    }

    let mut inputs = sig.inputs.iter().peekable();
    match place {
        Place::Free => {
            if let Some(FnArg::Receiver(receiver)) = inputs.peek() {
                errors.push(syn::Error::new_spanned(
                    receiver,
                    "#[message_handler] goes on a free function, not a method; to handle \
                     messages in methods, put #[consumer(topics = [\"…\"])] on the impl block \
                     and #[on_event(\"event.name\")] on each method",
                ));
                inputs.next();
            }
        }
        Place::Method { .. } => match inputs.peek() {
            Some(FnArg::Receiver(receiver)) => {
                inputs.next();
                if let Err(error) = check_receiver(receiver) {
                    errors.push(error);
                }
            }
            _ => errors.push(syn::Error::new(
                name.span(),
                format!(
                    "an #[on_event] method takes `&self` first, then the event: \
                     `async fn {name}(&self, event: Event<T>)`"
                ),
            )),
        },
    }

    let self_ty = match place {
        Place::Free => None,
        Place::Method { self_ty } => Some(*self_ty),
    };
    let payload = match inputs.next() {
        Some(FnArg::Typed(arg)) => {
            let ty = replace_self(&arg.ty, self_ty);
            errors
                .keep(check_argument_type(&ty, true))
                .map(|()| Payload { ty })
        }
        Some(FnArg::Receiver(receiver)) => {
            errors.push(syn::Error::new_spanned(receiver, "`self` must come first"));
            None
        }
        None => {
            let message = match place {
                Place::Free => format!(
                    "{what} takes the message as its first argument, e.g. `msg: \
                     serde_json::Value`, `order: OrderCreated`, `event: Event<T>` or `body: Bytes`"
                ),
                Place::Method { .. } => format!(
                    "{what} takes the event after `&self`: `async fn {name}(&self, event: \
                     Event<UserCreated>)`"
                ),
            };
            errors.push(syn::Error::new(sig.paren_token.span.join(), message));
            None
        }
    };

    let mut extractors = Vec::new();
    for input in inputs {
        match input {
            FnArg::Typed(arg) => {
                let ty = replace_self(&arg.ty, self_ty);
                if errors.keep(check_argument_type(&ty, false)).is_some() {
                    extractors.push(ty);
                }
            }
            FnArg::Receiver(receiver) => {
                errors.push(syn::Error::new_spanned(receiver, "`self` must come first"));
            }
        }
    }

    let output = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => {
            if let Type::ImplTrait(_) = **ty {
                errors.push(syn::Error::new_spanned(
                    ty,
                    "a handler returns a concrete type: `()`, `anyhow::Result<()>` or \
                     `Result<(), HandlerError>`, not `impl Trait`",
                ));
            }
            Some(replace_self(ty, self_ty))
        }
    };

    errors.finish()?;
    Ok(HandlerSig {
        ident: sig.ident.clone(),
        payload: payload.expect("no error means a payload"),
        extractors,
        output,
    })
}

fn check_receiver(receiver: &syn::Receiver) -> syn::Result<()> {
    let message = if receiver.colon_token.is_some() {
        "an #[on_event] method takes `&self`; other receiver types are not supported"
    } else if receiver.reference.is_none() {
        "an #[on_event] method takes `&self`, not `self`: one instance serves every message"
    } else if receiver.mutability.is_some() {
        "an #[on_event] method takes `&self`, not `&mut self`: one instance serves concurrent \
         messages, so keep mutable state behind a `Mutex` or atomics"
    } else {
        return Ok(());
    };
    Err(syn::Error::new_spanned(receiver, message))
}

/// Rejects the types that can never be built per message: borrowed ones, `impl Trait`, `_`.
fn check_argument_type(ty: &Type, first: bool) -> syn::Result<()> {
    match ty {
        Type::Reference(reference) => {
            let owned = owned_form(&reference.elem);
            let message = if first {
                format!(
                    "the message is passed to the handler by value: take `{owned}` instead of a \
                     reference"
                )
            } else {
                format!(
                    "handler arguments are passed by value: take `{owned}` instead of a reference"
                )
            };
            Err(syn::Error::new_spanned(ty, message))
        }
        Type::ImplTrait(_) => Err(syn::Error::new_spanned(
            ty,
            "`impl Trait` arguments make the handler generic, which is not supported; name a \
             concrete type",
        )),
        Type::Infer(_) => Err(syn::Error::new_spanned(ty, "handler arguments need a type")),
        _ => Ok(()),
    }
}

/// The owned type to suggest for `&inner`.
fn owned_form(inner: &Type) -> String {
    match inner {
        Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
        Type::Slice(slice) if matches!(&*slice.elem, Type::Path(p) if p.path.is_ident("u8")) => {
            "Bytes".to_owned()
        }
        Type::Slice(slice) => format!("Vec<{}>", type_string(&slice.elem)),
        other => type_string(other),
    }
}

/// A type as it would be written: `Event<String>`, not `Event < String >`.
pub(crate) fn type_string(ty: &Type) -> String {
    let spaced = ty.to_token_stream().to_string();
    let chars: Vec<char> = spaced.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '\'';
    let mut out = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let before = i.checked_sub(1).map(|j| chars[j]);
            let after = chars.get(i + 1).copied();
            // Keep the spaces between words (`dyn Trait`, `&'a str`), after commas, around `+`.
            let keep = matches!((before, after), (Some(b), Some(a)) if word(b) && word(a))
                || before == Some(',')
                || before == Some('+')
                || after == Some('+');
            if !keep {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// `ty` with every `Self` replaced by `self_ty`, spans kept.
fn replace_self(ty: &Type, self_ty: Option<&Type>) -> Type {
    let Some(self_ty) = self_ty else {
        return ty.clone();
    };
    let replaced = replace_in(ty.to_token_stream(), &self_ty.to_token_stream());
    syn::parse2(replaced).unwrap_or_else(|_| ty.clone())
}

fn replace_in(tokens: TokenStream, with: &TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .flat_map(|tt| -> Vec<TokenTree> {
            match tt {
                TokenTree::Ident(ident) if ident == "Self" => {
                    // Grouped so that `Self::Assoc` stays a path (`<Type>::Assoc`).
                    let group = Group::new(proc_macro2::Delimiter::None, with.clone());
                    vec![TokenTree::Group(group)]
                }
                TokenTree::Group(group) => {
                    let mut new = Group::new(group.delimiter(), replace_in(group.stream(), with));
                    new.set_span(group.span());
                    vec![TokenTree::Group(new)]
                }
                other => vec![other],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> Type {
        syn::parse_str(s).unwrap()
    }

    #[test]
    fn types_print_as_written() {
        for written in [
            "Event<String>",
            "(StatusCode, Json<UserOut>)",
            "&'a str",
            "Box<dyn Error + Send>",
            "a::b::C<Vec<u8>>",
        ] {
            assert_eq!(type_string(&ty(written)), written);
        }
    }

    #[test]
    fn self_is_replaced_in_method_argument_types() {
        let replaced = replace_self(&ty("State<Self>"), Some(&ty("OrderEvents")));
        assert_eq!(type_string(&replaced), "State<OrderEvents>");
    }
}
