//! `#[derive(Equivalence)]` for the `mpi` crate (re-exported as
//! `mpi::traits::Equivalence`, as in rsmpi): a struct whose fields are all
//! `Equivalence` becomes a datatype that travels in point-to-point messages and
//! collectives, and that user-defined operations can reduce.
//!
//! The generated `unsafe impl` is sound because the macro checks the trait's contract
//! at compile time: every field is `Equivalence` (plain data), and the struct's size is
//! the sum of its fields' sizes (no padding, so every byte is initialized). Fields
//! with invalid byte patterns (`bool`) make received bytes checked field by field.
//! The struct must be `Copy` (a supertrait of `Equivalence`).

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Fields, Member};

#[proc_macro_derive(Equivalence)]
pub fn derive_equivalence(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let name = &input.ident;
    let fields = match &input.data {
        Data::Struct(data) => &data.fields,
        Data::Enum(_) => return Err(syn::Error::new(input.ident.span(), "#[derive(Equivalence)] supports structs only, not enums")),
        Data::Union(_) => return Err(syn::Error::new(input.ident.span(), "#[derive(Equivalence)] supports structs only, not unions")),
    };
    if input.generics.lifetimes().next().is_some() {
        return Err(syn::Error::new(input.generics.span(), "#[derive(Equivalence)]: a struct with lifetimes holds references, which cannot travel"));
    }
    let members: Vec<(Member, &syn::Type)> = match fields {
        Fields::Named(named) => named.named.iter().map(|f| (Member::Named(f.ident.clone().expect("named field")), &f.ty)).collect(),
        Fields::Unnamed(unnamed) => unnamed.unnamed.iter().enumerate().map(|(i, f)| (Member::Unnamed(i.into()), &f.ty)).collect(),
        Fields::Unit => Vec::new(),
    };
    let mpi = quote!(::mpi::datatype);
    // Every field type must be Equivalence; the error points at the field.
    let field_bounds = members.iter().map(|(_, ty)| {
        quote_spanned!(ty.span()=> #ty: #mpi::Equivalence)
    });
    let mut generics = input.generics.clone();
    {
        let clause = generics.make_where_clause();
        for bound in field_bounds {
            clause.predicates.push(syn::parse2(bound)?);
        }
    }
    let (impl_generics, type_generics, where_clause) = generics.split_for_impl();
    let sizes = members.iter().map(|(_, ty)| quote!(::core::mem::size_of::<#ty>()));
    let invalid = members.iter().map(|(_, ty)| quote!(<#ty as #mpi::Equivalence>::HAS_INVALID_BYTES));
    let checks = members.iter().map(|(member, ty)| {
        quote! {
            <#ty as #mpi::Equivalence>::is_valid_bytes(
                &bytes[::core::mem::offset_of!(Self, #member)..][..::core::mem::size_of::<#ty>()]
            )
        }
    });
    let message = format!("#[derive(Equivalence)] on `{name}`: the struct has padding bytes (reorder its fields or add explicit padding fields)");
    Ok(quote! {
        // SAFETY: every field is `Equivalence` (where clause) and the size check below
        // rules out padding, so the struct is plain data whose bytes are all its fields'
        // bytes; invalid field patterns are checked by `is_valid_bytes`.
        unsafe impl #impl_generics #mpi::Equivalence for #name #type_generics #where_clause {
            const HAS_INVALID_BYTES: bool = false #(|| #invalid)*;

            fn equivalent_datatype() -> #mpi::DatatypeRef {
                const { ::core::assert!(::core::mem::size_of::<Self>() == 0 #(+ #sizes)*, #message) };
                #mpi::DatatypeRef::structure::<Self>()
            }

            fn is_valid_bytes(bytes: &[u8]) -> bool {
                true #(&& #checks)*
            }
        }
    })
}
