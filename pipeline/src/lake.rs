//! Where the lake lives: a local directory (or a mounted volume), or an object store —
//! S3 and S3-compatible stores such as MinIO (`s3://bucket/prefix`), Azure ADLS Gen2 and
//! Blob Storage (`abfss://container@account.dfs.core.windows.net/prefix`, `az://…`) and
//! Google Cloud Storage (`gs://bucket/prefix`). Credentials and endpoints come from the
//! environment, as delta-rs reads them (`AWS_*`, `AZURE_*`, `GOOGLE_*`).

use std::path::{Path, PathBuf};

/// URL schemes of the object stores sluice writes to.
pub const OBJECT_STORE_SCHEMES: [&str; 7] = ["s3", "s3a", "az", "azure", "abfs", "abfss", "gs"];

/// The lake's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lake {
    Local(PathBuf),
    /// An object store, its URL ending in `/`.
    ObjectStore(url::Url),
}

impl Lake {
    /// A directory path, or a URL of a supported object store. Errors name what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((scheme, _)) = s.split_once("://") else {
            return Ok(Lake::Local(PathBuf::from(s)));
        };
        if scheme == "file" {
            let url = url::Url::parse(s).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
            return url
                .to_file_path()
                .map(Lake::Local)
                .map_err(|()| format!("'{s}' is not a local path"));
        }
        if !OBJECT_STORE_SCHEMES.contains(&scheme) {
            return Err(format!(
                "'{scheme}://' is not a supported lake location: use a directory, or {}",
                OBJECT_STORE_SCHEMES.map(|s| format!("{s}://")).join(", ")
            ));
        }
        let mut url = url::Url::parse(s).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "'{s}' names no bucket or container (e.g. {scheme}://bucket/lake)"
            ));
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(Lake::ObjectStore(url))
    }

    /// The directory, for a local lake.
    pub fn local(&self) -> Option<&Path> {
        match self {
            Lake::Local(p) => Some(p),
            Lake::ObjectStore(_) => None,
        }
    }

    /// The URL of `relative` (a table's location, e.g. `bronze/customers`) in an
    /// object-store lake, ending in `/`.
    pub fn object_url(&self, relative: &str) -> Option<url::Url> {
        let Lake::ObjectStore(root) = self else {
            return None;
        };
        let relative = relative.trim_matches('/');
        if relative.is_empty() {
            return Some(root.clone());
        }
        root.join(&format!("{relative}/")).ok()
    }
}

impl std::fmt::Display for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lake::Local(p) => write!(f, "{}", p.display()),
            Lake::ObjectStore(u) => write!(f, "{u}"),
        }
    }
}

impl From<&Path> for Lake {
    fn from(p: &Path) -> Self {
        Lake::Local(p.to_path_buf())
    }
}

impl From<&PathBuf> for Lake {
    fn from(p: &PathBuf) -> Self {
        Lake::Local(p.clone())
    }
}

impl From<PathBuf> for Lake {
    fn from(p: PathBuf) -> Self {
        Lake::Local(p)
    }
}

impl From<&Lake> for Lake {
    fn from(l: &Lake) -> Self {
        l.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_object_stores_parse_and_other_schemes_are_refused() {
        assert_eq!(
            Lake::parse("/data/lake").expect("dir"),
            Lake::Local("/data/lake".into())
        );
        assert_eq!(
            Lake::parse("file:///data/lake").expect("file"),
            Lake::Local("/data/lake".into())
        );
        let s3 = Lake::parse("s3://bank-lake/prod").expect("s3");
        assert_eq!(s3.to_string(), "s3://bank-lake/prod/");
        assert_eq!(
            s3.object_url("bronze/customers").expect("url").as_str(),
            "s3://bank-lake/prod/bronze/customers/"
        );
        assert_eq!(
            s3.object_url("").expect("root"),
            s3.object_url("/").expect("root")
        );
        assert_eq!(
            s3.object_url("").expect("root").as_str(),
            "s3://bank-lake/prod/"
        );
        assert_eq!(s3.local(), None);
        for ok in [
            "gs://b/lake",
            "abfss://lake@acct.dfs.core.windows.net/x",
            "az://c/x",
        ] {
            assert!(matches!(Lake::parse(ok), Ok(Lake::ObjectStore(_))), "{ok}");
        }
        let e = Lake::parse("ftp://host/x").expect_err("ftp");
        assert!(
            e.contains("'ftp://' is not a supported lake location"),
            "{e}"
        );
        assert!(Lake::parse("s3:///x").is_err());
    }
}
