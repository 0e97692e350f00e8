//! The page, its script and its style, embedded in the binary with
//! `include_str!`: the UI needs no files at run time and loads nothing from
//! elsewhere (no CDN, no web fonts), so it works on a LAN without internet.

use crate::http::handler::html_escape;

/// The page; [`TOKEN_PLACEHOLDER`] is replaced by the token.
const INDEX_HTML: &str = include_str!("assets/index.html");

/// Stands for the token in [`INDEX_HTML`].
const TOKEN_PLACEHOLDER: &str = "{{TOKEN}}";

/// The page's script (served at `/assets/app.js`).
pub const APP_JS: &str = include_str!("assets/app.js");

/// The page's style (served at `/assets/style.css`).
pub const STYLE_CSS: &str = include_str!("assets/style.css");

/// The page with `token` in its `<meta name="p2p-token">`.
pub fn page(token: &str) -> String {
    INDEX_HTML.replace(TOKEN_PLACEHOLDER, &html_escape(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_token_and_nothing_external() {
        let page = page("abc123");
        assert!(page.contains("<meta name=\"p2p-token\" content=\"abc123\">"));
        assert!(!page.contains(TOKEN_PLACEHOLDER));
        for text in [&page, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("@font-face"));
        }
    }
}
