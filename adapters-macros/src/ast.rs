//! The annotated struct as a model: its container arguments and each field's role, with the
//! original syntax kept for spans and for re-emitting the item.

use syn::{Fields, GenericArgument, Ident, Item, ItemStruct, PathArguments, Type};

use crate::attr::{self, ContainerAttr, FieldArgs, Role};
use crate::ctxt::Ctxt;

/// An annotated struct with named fields.
pub struct Input<'a> {
    /// The struct as written.
    pub item: &'a ItemStruct,
    /// `#[adapter(...)]`.
    pub attr: ContainerAttr,
    /// Every named field, in declaration order.
    pub fields: Vec<Field<'a>>,
}

/// One field and what the DSL says about it.
pub struct Field<'a> {
    /// The field name.
    pub ident: &'a Ident,
    /// The field type as written.
    pub ty: &'a Type,
    /// Its helper attribute, if any.
    pub role: Option<FieldRole<'a>>,
}

/// A field's helper attribute, its arguments, and what its type was recognised as.
pub struct FieldRole<'a> {
    /// `adapt`, `frozen` or `nested`.
    pub role: Role,
    /// The attribute as written (for spans).
    pub attr: &'a syn::Attribute,
    /// Its arguments.
    pub args: FieldArgs,
    /// For `#[adapt]` / `#[frozen]`: the layer kind the type names (`None`: unsupported type).
    pub layer: Option<Layer>,
    /// For `#[nested]`: the collection shape (`None`: unsupported type).
    pub shape: Option<Shape<'a>>,
}

/// The layer kind of an adapted or frozen field, recognised by the type's last path segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// `Linear` (candle_nn's) or the runtime's `AdaptedLinear`.
    Linear,
    /// `Embedding` (candle_nn's) or the runtime's `AdaptedEmbedding`.
    Embedding,
    /// Any other path type under `#[frozen]` (counted like a linear layer from `in`/`out`).
    Other,
}

/// The shape of a `#[nested]` field.
pub enum Shape<'a> {
    /// `T`: one nested struct.
    Single(&'a Type),
    /// `Vec<T>`: a run-time length, checked against `count`.
    Vec(&'a Type),
    /// `[T; N]`: the length is part of the type.
    Array(&'a Type, &'a syn::Expr),
}

impl<'a> Input<'a> {
    /// Builds the model from the item and its parsed `#[adapter(...)]`, recording errors for
    /// items that are not structs with named fields.
    pub fn from_syn(item: &'a Item, attr: ContainerAttr, cx: &Ctxt) -> Option<Input<'a>> {
        let item = match item {
            Item::Struct(s) => s,
            Item::Enum(e) => {
                cx.error(
                    e.enum_token.span,
                    "`#[adapter]` applies to a struct with named fields, not to an `enum`",
                );
                return None;
            }
            Item::Union(u) => {
                cx.error(
                    u.union_token.span,
                    "`#[adapter]` applies to a struct with named fields, not to a `union`",
                );
                return None;
            }
            other => {
                cx.error_spanned(
                    other,
                    "`#[adapter]` applies to a struct with named fields (a model's layers)",
                );
                return None;
            }
        };
        let named = match &item.fields {
            Fields::Named(named) => named,
            Fields::Unnamed(f) => {
                cx.error_spanned(
                    f,
                    format!("`#[adapter]` needs named fields: layer paths are field names, but `{}` is a tuple struct", item.ident),
                );
                return None;
            }
            Fields::Unit => {
                cx.error(
                    item.ident.span(),
                    format!(
                        "`#[adapter]` needs a struct with named fields, but `{}` is a unit struct",
                        item.ident
                    ),
                );
                return None;
            }
        };
        let fields = named
            .named
            .iter()
            .filter_map(|f| {
                Some(Field {
                    ident: f.ident.as_ref()?,
                    ty: &f.ty,
                    role: field_role(f, cx),
                })
            })
            .collect();
        Some(Input { item, attr, fields })
    }
}

/// Reads a field's helper attribute; a second one is an error.
fn field_role<'a>(f: &'a syn::Field, cx: &Ctxt) -> Option<FieldRole<'a>> {
    let mut found: Option<FieldRole<'a>> = None;
    for a in &f.attrs {
        let Some(role) = Role::of(a) else { continue };
        let args = attr::field(a, role, cx);
        if let Some(prev) = &found {
            let msg = if prev.role == role {
                format!("duplicate `#[{}]` on this field", role.name())
            } else {
                format!(
                    "a field takes one of `#[adapt]`, `#[frozen]` or `#[nested]`, but this one already has `#[{}]`",
                    prev.role.name()
                )
            };
            cx.error_spanned(a, msg);
            continue;
        }
        let (layer, shape) = match role {
            Role::Nested => (None, shape(&f.ty)),
            _ => (layer(&f.ty), None),
        };
        found = Some(FieldRole {
            role,
            attr: a,
            args,
            layer,
            shape,
        });
    }
    found
}

/// The layer kind named by a path type without generic arguments.
fn layer(ty: &Type) -> Option<Layer> {
    let Type::Path(p) = ungroup(ty) else {
        return None;
    };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if !last.arguments.is_none() {
        return Some(Layer::Other);
    }
    Some(match last.ident.to_string().as_str() {
        "Linear" | "AdaptedLinear" => Layer::Linear,
        "Embedding" | "AdaptedEmbedding" => Layer::Embedding,
        _ => Layer::Other,
    })
}

/// `T`, `Vec<T>` or `[T; N]`.
fn shape(ty: &Type) -> Option<Shape<'_>> {
    match ungroup(ty) {
        Type::Array(a) => Some(Shape::Array(&a.elem, &a.len)),
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            if last.ident == "Vec" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    if let [GenericArgument::Type(t)] = args.args.iter().collect::<Vec<_>>()[..] {
                        return Some(Shape::Vec(t));
                    }
                }
                return None;
            }
            Some(Shape::Single(ty))
        }
        _ => None,
    }
}

fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => ungroup(&g.elem),
        Type::Paren(p) => ungroup(&p.elem),
        t => t,
    }
}
