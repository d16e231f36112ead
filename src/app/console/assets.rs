//! The page's files, built into the binary (no CDN, no network): plain
//! HTML, CSS and JavaScript, no build step, held to a size budget (the
//! test below).

use axum::http::header;
use axum::response::{IntoResponse, Redirect};

pub const INDEX: &str = include_str!("assets/index.html");
pub const SCRIPT: &str = include_str!("assets/app.js");
pub const STYLE: &str = include_str!("assets/app.css");
pub const ICON: &str = include_str!("assets/icon.svg");

/// The page's files are public (they hold no data); the feed is not.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

pub async fn root() -> Redirect {
    Redirect::temporary("/ui")
}

pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

pub async fn icon() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON)
}

/// Total size of the embedded files.
pub fn total_bytes() -> usize {
    INDEX.len() + SCRIPT.len() + STYLE.len() + ICON.len()
}

/// The page's budget: every byte of it is in the binary of a small board.
pub const BUDGET_BYTES: usize = 150 * 1000;

#[cfg(test)]
mod tests {
    #[test]
    fn assets_stay_within_their_budget_and_load_nothing_from_elsewhere() {
        assert!(
            super::total_bytes() <= super::BUDGET_BYTES,
            "{} bytes",
            super::total_bytes()
        );
        for (name, text) in [
            ("index.html", super::INDEX),
            ("app.js", super::SCRIPT),
            ("app.css", super::STYLE),
        ] {
            // The SVG namespace is a name, not an address.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for bad in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(bad), "{name} refers to {bad}");
            }
        }
    }
}
