//! Tokens back to the user's spelling for messages: `adapters_runtime :: candle_nn :: Conv1d`
//! becomes `adapters_runtime::candle_nn::Conv1d`, `- 16` becomes `-16`.

use quote::ToTokens;

/// The tokens as a user would write them (spacing only; never changes the tokens themselves).
pub fn pretty(tokens: impl ToTokens) -> String {
    let mut s = tokens.to_token_stream().to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" ::", "::"),
        (" ,", ","),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        ("& ", "&"),
        (" ;", ";"),
        ("# [", "#["),
        (" !", "!"),
    ] {
        s = s.replace(from, to);
    }
    if let Some(rest) = s.strip_prefix("- ") {
        s = format!("-{rest}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::pretty;
    use quote::quote;

    #[test]
    fn spacing() {
        assert_eq!(pretty(quote!(a::b::Conv1d)), "a::b::Conv1d");
        assert_eq!(pretty(quote!(-16)), "-16");
        assert_eq!(pretty(quote!(Vec<Block<16, 32>>)), "Vec<Block<16, 32>>");
        assert_eq!(pretty(quote!([Block; 2])), "[Block; 2]");
        assert_eq!(pretty(quote!(32_000 * H)), "32_000 * H");
        assert_eq!(pretty(quote!((Linear, Linear))), "(Linear, Linear)");
    }
}
