use super::*;

#[test]
fn the_page_loads_only_its_own_assets() {
    // No CDN, no inline script (the CSP forbids it), every asset served.
    for asset in [INDEX, APP_JS, STYLE] {
        assert!(!asset.contains("http://") || asset.contains("http://www.w3.org/2000/svg"));
        assert!(!asset.contains("https://"));
    }
    assert!(INDEX.contains(r#"<script src="/app.js" defer></script>"#));
    assert_eq!(INDEX.matches("<script").count(), 1);
    assert!(!INDEX.contains(" style="));
    // `hidden` hides, whatever display a section's own rule sets.
    assert!(STYLE.contains("[hidden] { display: none !important; }"));
    // Values are shown as text, never parsed as markup.
    assert!(!APP_JS.contains("innerHTML"));
}
