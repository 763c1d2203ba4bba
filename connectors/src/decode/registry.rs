//! Avro writer schemas by id from a Confluent Schema Registry (`GET /schemas/ids/{id}`,
//! through schema_registry_converter), fetched once per id per process and kept on disk
//! so that a restart while the registry is down goes on with the schemas it has seen.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use schema_registry_converter::blocking::schema_registry::{SrSettings, get_schema_by_id};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SchemaType;
use sluice_pipeline::metrics::{SCHEMA_REGISTRY_FAILURES_TOTAL, SCHEMA_REGISTRY_REQUESTS_TOTAL};

use crate::error::{Error, Result};

/// How to reach the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URLs, tried in order.
    pub urls: Vec<String>,
    /// Basic auth, already read from the environment.
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM certificate(s) of a private CA to trust for `https` URLs.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Where fetched schemas are kept (`<lake>/_sluice/schema_registry/<url>`); `None`: memory only.
    pub cache_dir: Option<PathBuf>,
    /// Attempts when the registry cannot be reached, with a doubling pause from 250 ms.
    pub attempts: u32,
}

/// Unknown or unusable schema ids remembered at most (then forgotten all at once).
const MAX_UNUSABLE_IDS: usize = 1024;

/// What the registry says about an id.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The Avro schema text.
    Found(std::sync::Arc<str>),
    /// The registry does not know the id or it is not a usable Avro schema: its
    /// messages are dead letters (stage `decode`) with this reason.
    Unusable(String),
}

/// A Schema Registry client with a per-process and an on-disk cache.
///
/// Its HTTP client is blocking (lookups happen on the consumer thread) and is built on
/// first use, so that it is never created or dropped inside the async runtime.
pub struct SchemaRegistry {
    settings: OnceLock<SrSettings>,
    certificates: Vec<reqwest::Certificate>,
    config: RegistryConfig,
    cache: Mutex<HashMap<u32, Lookup>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("urls", &self.config.urls)
            .finish()
    }
}

/// A directory name for a registry URL: ids are only unique within one registry.
pub fn cache_dir_name(url: &str) -> String {
    url.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl SchemaRegistry {
    pub fn new(config: RegistryConfig) -> Result<Self> {
        if config.urls.is_empty() {
            return Err(Error::Registry("no schema registry URL".into()));
        }
        let certificates = match &config.ca_pem {
            Some(pem) => {
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::RegistryClient {
                    context: "reading the registry CA file",
                    source: Box::new(e),
                })?
            }
            None => Vec::new(),
        };
        Ok(Self {
            settings: OnceLock::new(),
            certificates,
            config,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn settings(&self) -> Result<&SrSettings> {
        if let Some(s) = self.settings.get() {
            return Ok(s);
        }
        let urls = &self.config.urls;
        let mut builder = SrSettings::new_builder(urls[0].clone());
        for url in &urls[1..] {
            builder.add_url(url.clone());
        }
        if let Some(user) = &self.config.username {
            builder.set_basic_authorization(user, self.config.password.as_deref());
        }
        builder.set_timeout(self.config.timeout);
        let mut client = reqwest::blocking::Client::builder();
        for cert in &self.certificates {
            client = client.add_root_certificate(cert.clone());
        }
        let settings = builder
            .build_with(client)
            .map_err(|e| Error::RegistryClient {
                context: "configuring the registry client",
                source: Box::new(e),
            })?;
        Ok(self.settings.get_or_init(|| settings))
    }

    /// The schema of `id`: from memory, else the registry, else the disk cache. An error
    /// means the registry could not be reached (or refused us) and the id is not cached:
    /// the pipeline stops rather than dead-letter messages that are fine.
    pub fn lookup(&self, id: u32) -> Result<Lookup> {
        if let Some(l) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(l);
        }
        let found = match self.fetch(id) {
            Ok(l) => {
                if let Lookup::Found(text) = &l {
                    self.store(id, text);
                }
                l
            }
            Err(e) => match self.stored(id) {
                Some(text) => {
                    tracing::warn!(schema_id = id, error = %e, "schema registry unavailable; using the schema cached on disk");
                    Lookup::Found(text.into())
                }
                None => return Err(e),
            },
        };
        if let Ok(mut c) = self.cache.lock() {
            // Ids are the producers' to choose: the ones the registry does not know are
            // remembered only up to a bound, so random ids cannot grow memory.
            if matches!(found, Lookup::Unusable(_))
                && c.values()
                    .filter(|l| matches!(l, Lookup::Unusable(_)))
                    .count()
                    >= MAX_UNUSABLE_IDS
            {
                c.retain(|_, l| matches!(l, Lookup::Found(_)));
            }
            c.insert(id, found.clone());
        }
        Ok(found)
    }

    fn fetch(&self, id: u32) -> Result<Lookup> {
        let mut pause = Duration::from_millis(250);
        let mut last = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            metrics::counter!(SCHEMA_REGISTRY_REQUESTS_TOTAL).increment(1);
            match get_schema_by_id(id, self.settings()?) {
                Ok(s) if s.schema_type != SchemaType::Avro => {
                    return Ok(Lookup::Unusable(format!(
                        "schema id {id} is a {:?} schema, not Avro",
                        s.schema_type
                    )));
                }
                Ok(s) if !s.references.is_empty() => {
                    return Ok(Lookup::Unusable(format!(
                        "schema id {id} uses schema references, which sluice does not resolve"
                    )));
                }
                Ok(s) => return Ok(Lookup::Found(s.schema.into())),
                Err(e) if not_found(&e) => {
                    return Ok(Lookup::Unusable(format!(
                        "schema id {id} is unknown to the schema registry"
                    )));
                }
                Err(e) => {
                    last = describe(&e);
                    if !e.retriable {
                        break;
                    }
                    if attempt < self.config.attempts {
                        std::thread::sleep(pause);
                        pause *= 2;
                    }
                }
            }
        }
        metrics::counter!(SCHEMA_REGISTRY_FAILURES_TOTAL).increment(1);
        Err(Error::Registry(format!(
            "fetching schema id {id} from {}: {last}",
            self.config.urls.join(", ")
        )))
    }

    fn path(&self, id: u32) -> Option<PathBuf> {
        self.config
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{id}.avsc")))
    }

    fn stored(&self, id: u32) -> Option<String> {
        std::fs::read_to_string(self.path(id)?).ok()
    }

    fn store(&self, id: u32, text: &str) {
        let Some(path) = self.path(id) else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Written aside and renamed, so a crash never leaves half a schema.
            let tmp = path.with_extension("avsc.tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(schema_id = id, error = %e, "could not cache the schema on disk");
        }
    }
}

fn not_found(e: &SRCError) -> bool {
    e.cause
        .as_deref()
        .is_some_and(|c| c.contains("40403") || c.contains("40401"))
        || e.error.contains("status 404")
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    }
}
