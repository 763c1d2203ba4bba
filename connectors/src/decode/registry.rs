//! Avro writer schemas by id from a Confluent Schema Registry (`GET /schemas/ids/{id}`,
//! through schema_registry_converter), fetched once per id per process and kept on disk
//! so that a restart while the registry is down goes on with the schemas it has seen.
//!
//! A schema that references named types registered on their own (schema references:
//! `GET /subjects/{subject}/versions/{version}`, recursively) is made self-contained: each
//! referenced type is defined in place at its first use, later uses stay names. The
//! decoder then needs one schema text, the disk cache keeps that text, and a restart
//! needs no reference fetched again.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use schema_registry_converter::blocking::schema_registry::{
    SrSettings, get_referenced_schema, get_schema_by_id,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RegisteredReference, RegisteredSchema, SchemaType,
};
use serde_json::{Map, Value};
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

/// Schemas one schema may reference, directly or through others: a bound on what one id
/// can make sluice fetch.
const MAX_REFERENCES: usize = 32;

/// Nesting a schema made self-contained may reach; beyond it nothing more is put in
/// place (the decoder refuses schemas nested deeper anyway).
const MAX_SCHEMA_DEPTH: usize = 128;

/// The longest schema text references may make (each referenced type is put in place
/// once, so only registry answers this large reach it).
const MAX_SCHEMA_BYTES: usize = 1 << 20;

/// Avro's primitive type names, which never name a registered type.
const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

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
            return Err(Error::RegistryUnset);
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
                Ok(s) if !s.references.is_empty() => return self.with_references(id, s),
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
        Err(Error::RegistryFetch {
            id,
            urls: self.config.urls.join(", "),
            reason: last,
        })
    }

    /// Schema `id`, which references others: self-contained, each type it references
    /// (and those reference) defined in place at its first use.
    fn with_references(&self, id: u32, schema: RegisteredSchema) -> Result<Lookup> {
        let unusable = |why: String| Ok(Lookup::Unusable(format!("schema id {id}: {why}")));
        let mut definitions: HashMap<String, Value> = HashMap::new();
        let mut fetched: HashSet<(String, u32)> = HashSet::new();
        let mut pending: Vec<RegisteredReference> = schema.references;
        while let Some(r) = pending.pop() {
            if !fetched.insert((r.subject.clone(), r.version)) {
                continue;
            }
            let which = format!(
                "its reference {} (subject {}, version {})",
                r.name, r.subject, r.version
            );
            if fetched.len() > MAX_REFERENCES {
                return unusable(format!("it references more than {MAX_REFERENCES} schemas"));
            }
            let referenced = match self.retried(|settings| get_referenced_schema(settings, &r))? {
                Ok(s) => s,
                Err(e) if not_found(&e) => {
                    return unusable(format!("{which} is unknown to the schema registry"));
                }
                Err(e) => {
                    metrics::counter!(SCHEMA_REGISTRY_FAILURES_TOTAL).increment(1);
                    return Err(Error::RegistryFetch {
                        id,
                        urls: self.config.urls.join(", "),
                        reason: format!("{which}: {}", describe(&e)),
                    });
                }
            };
            if referenced.schema_type != SchemaType::Avro {
                return unusable(format!("{which} is not an Avro schema"));
            }
            let Ok(definition) = serde_json::from_str::<Value>(&referenced.schema) else {
                return unusable(format!("{which} is not JSON"));
            };
            let named = definition.as_object().filter(|d| {
                matches!(
                    d.get("type").and_then(Value::as_str),
                    Some("record" | "error" | "enum" | "fixed")
                )
            });
            let Some(name) = named.and_then(|d| defined_name(d, None)) else {
                return unusable(format!(
                    "{which} is not a named type (a record, enum or fixed)"
                ));
            };
            match definitions.get(&name) {
                Some(other) if *other != definition => {
                    return unusable(format!("two of its references define {name}, differently"));
                }
                _ => {}
            }
            definitions.insert(name, definition);
            pending.extend(referenced.references);
        }
        let Ok(mut main) = serde_json::from_str::<Value>(&schema.schema) else {
            return unusable("the schema is not JSON".into());
        };
        inline(&mut main, None, &definitions, &mut HashSet::new(), 0);
        let text = main.to_string();
        if text.len() > MAX_SCHEMA_BYTES {
            return unusable(format!(
                "with its references it takes more than {MAX_SCHEMA_BYTES} bytes"
            ));
        }
        Ok(Lookup::Found(text.into()))
    }

    /// `call` against the registry, retried as a schema fetch is while its error is
    /// retriable; the outer error is the client's set-up.
    fn retried<T>(
        &self,
        call: impl Fn(&SrSettings) -> std::result::Result<T, SRCError>,
    ) -> Result<std::result::Result<T, SRCError>> {
        let mut pause = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            metrics::counter!(SCHEMA_REGISTRY_REQUESTS_TOTAL).increment(1);
            match call(self.settings()?) {
                Err(e) if e.retriable && attempt < self.config.attempts => {
                    std::thread::sleep(pause);
                    pause *= 2;
                    attempt += 1;
                }
                other => return Ok(other),
            }
        }
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

/// The full name of a named type written `name` where names resolve in `namespace`.
fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// The full name the definition `definition` gives its type, where names resolve in
/// `namespace`; `None` when it names none.
fn defined_name(definition: &Map<String, Value>, namespace: Option<&str>) -> Option<String> {
    let name = definition.get("name")?.as_str()?;
    let namespace = definition
        .get("namespace")
        .and_then(Value::as_str)
        .or(namespace);
    Some(full_name(name, namespace))
}

/// `schema` (where names resolve in `namespace`) with each type of `definitions` it uses
/// by name defined in place at its first use, in the order Avro reads a schema (depth
/// first); `defined` holds the types defined so far, whose later uses stay names.
fn inline(
    schema: &mut Value,
    namespace: Option<&str>,
    definitions: &HashMap<String, Value>,
    defined: &mut HashSet<String>,
    depth: usize,
) {
    if depth > MAX_SCHEMA_DEPTH {
        return;
    }
    match schema {
        Value::String(name) if !PRIMITIVES.contains(&name.as_str()) => {
            // A short name resolves in the enclosing namespace, else (a type registered
            // without one) as it is.
            let full = [full_name(name, namespace), name.clone()]
                .into_iter()
                .find(|n| definitions.contains_key(n));
            if let Some(full) = full
                && !defined.contains(&full)
                && let Some(definition) = definitions.get(&full)
            {
                // Defined from here on, before its own fields are looked at: a type that
                // uses itself stays a name inside (and arrow-avro refuses it).
                defined.insert(full);
                // A registered type's names resolve in its own namespace, not the one of
                // the place it is used in.
                *schema = definition.clone();
                inline(schema, None, definitions, defined, depth + 1);
            }
        }
        Value::Array(branches) => {
            for b in branches {
                inline(b, namespace, definitions, defined, depth + 1);
            }
        }
        Value::Object(definition) => match definition.get("type").and_then(Value::as_str) {
            Some("record" | "error" | "enum" | "fixed") => {
                let Some(full) = defined_name(definition, namespace) else {
                    return;
                };
                let own = full.rsplit_once('.').map(|(ns, _)| ns.to_string());
                defined.insert(full);
                if let Some(Value::Array(fields)) = definition.get_mut("fields") {
                    for field in fields {
                        if let Some(t) = field.get_mut("type") {
                            inline(t, own.as_deref(), definitions, defined, depth + 1);
                        }
                    }
                }
            }
            Some("array") => {
                if let Some(items) = definition.get_mut("items") {
                    inline(items, namespace, definitions, defined, depth + 1);
                }
            }
            Some("map") => {
                if let Some(values) = definition.get_mut("values") {
                    inline(values, namespace, definitions, defined, depth + 1);
                }
            }
            _ => {
                if let Some(t) = definition.get_mut("type") {
                    inline(t, namespace, definitions, defined, depth + 1);
                }
            }
        },
        _ => {}
    }
}

fn not_found(e: &SRCError) -> bool {
    e.cause.as_deref().is_some_and(|c| {
        ["40401", "40402", "40403"]
            .iter()
            .any(|code| c.contains(code))
    }) || e.error.contains("status 404")
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    }
}
