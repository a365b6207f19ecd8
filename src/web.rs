//! Static web pages built into the binary (being written).

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The embedded file served at `path`, if any.
pub fn asset(_path: &str) -> Option<Asset> {
    None
}
