//! The users' own APIs: protobuf services loaded from descriptor sets at
//! start-up (`--descriptor-set`, `--service`), each unary method mapped to a
//! route (`--method-route`, `--method-routes-file`) and an encoding
//! (`--transcode-json`).
//!
//! Everything here runs once, before the gateway serves: [`ApiArgs::load`]
//! reads the files, resolves every name and refuses a configuration that
//! cannot work (a missing or invalid set, a service not in it, a streaming
//! method, two methods on one route, a route that is also a `Process`
//! route) with an error that names the culprit. What it returns, [`Apis`],
//! is what the typed methods ([`crate::typed`]), reflection and health serve.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use amqp_gateway::SERVICE_NAME;
use prost_reflect::{DescriptorPool, MessageDescriptor, MethodDescriptor, ServiceDescriptor};

use crate::config::valid_route;

/// Services the gateway serves itself, which a user's API may not replace.
const OWN_SERVICES: [&str; 4] = [
    SERVICE_NAME,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The flags of this module, as the configuration reads them.
#[derive(Clone, Debug, Default)]
pub struct ApiArgs {
    /// `--descriptor-set` files.
    pub descriptor_sets: Vec<PathBuf>,
    /// `--service` names.
    pub services: Vec<String>,
    /// `--method-route` entries, `package.Service/Method=route`.
    pub method_routes: Vec<String>,
    /// `--method-routes-file`.
    pub method_routes_file: Option<PathBuf>,
    /// `--transcode-json` services and methods.
    pub transcode_json: Vec<String>,
}

/// A user API could not be loaded or served as configured.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A descriptor set does not decode, or its files do not resolve.
    #[error(
        "{path} is not a usable FileDescriptorSet: {reason}. Write it with `buf build -o FILE` or `protoc \
         --include_imports --include_source_info --descriptor_set_out=FILE`"
    )]
    InvalidSet {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--service` without any `--descriptor-set`.
    #[error("--service needs --descriptor-set: the files that describe the services")]
    NoDescriptorSets,
    /// `--descriptor-set` without any `--service`.
    #[error("--descriptor-set is given but no --service: name the services to serve")]
    NoServices,
    /// A service is not in the descriptor sets.
    #[error("service {name:?} is not in the descriptor sets, which define: {known}")]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The services the sets define.
        known: String,
    },
    /// A service the gateway serves itself.
    #[error("service {0:?} is served by the gateway itself and cannot be a user service")]
    OwnService(String),
    /// Streaming methods: the gateway serves unary methods only.
    #[error(
        "the gateway serves unary methods only; these methods stream: {0}. Serve their services elsewhere, or \
         move the streaming methods to a service of their own"
    )]
    Streaming(String),
    /// A `--method-route` entry (or a line of the routes file) is malformed.
    #[error("method route {0:?} is not of the form package.Service/Method=route")]
    MethodRouteSyntax(String),
    /// A method named by a flag is not served.
    #[error("{flag} names {name:?}, which is not {what} served with --service")]
    NotServed {
        /// The flag naming it.
        flag: &'static str,
        /// The name.
        name: String,
        /// "a method" or "a service or method".
        what: &'static str,
    },
    /// A method's route is given twice.
    #[error("method {0} has more than one --method-route")]
    DuplicateMethodRoute(String),
    /// A route name is not a valid route.
    #[error(
        "route {route:?} of method {method} is not a valid route (1 to 255 of A-Z a-z 0-9 . _ : -); give the \
         method one with --method-route"
    )]
    InvalidRoute {
        /// The method.
        method: String,
        /// The route.
        route: String,
    },
    /// Two methods on one route.
    #[error("methods {first} and {second} both map to route {route:?}: each method needs a route of its own")]
    SameRoute {
        /// The route.
        route: String,
        /// One method.
        first: String,
        /// The other.
        second: String,
    },
    /// A method's route is also a `Process` route.
    #[error(
        "route {route:?} of method {method} is also in --routes, where Process calls send it any payload: give \
         the method a route of its own (--method-route) or take it out of --routes"
    )]
    RouteTaken {
        /// The route.
        route: String,
        /// The method.
        method: String,
    },
}

/// How a typed method's messages travel to and from the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The caller's protobuf bytes, unchanged; the worker's reply bytes,
    /// unchanged (`application/x-protobuf`).
    Protobuf,
    /// Canonical proto3 JSON both ways (`application/json`), transcoded by
    /// the gateway.
    Json,
}

/// One served method.
#[derive(Clone)]
pub struct Method {
    /// Its full name, `package.Service/Method`: the `x-grpc-method` header.
    pub name: String,
    /// The route (routing key) its requests are published with.
    pub route: String,
    /// The request message.
    pub input: MessageDescriptor,
    /// The response message.
    pub output: MessageDescriptor,
    /// How its messages travel.
    pub encoding: Encoding,
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.name)
            .field("route", &self.route)
            .field("input", &self.input.full_name())
            .field("output", &self.output.full_name())
            .field("encoding", &self.encoding)
            .finish()
    }
}

/// The users' APIs the gateway serves (empty when no `--service` is given).
#[derive(Clone, Debug, Default)]
pub struct Apis {
    /// The served services, by full name.
    pub services: Vec<String>,
    /// The served methods, by gRPC path.
    pub methods: HashMap<String, Arc<Method>>,
    /// The descriptor sets as read, for reflection (which serves their
    /// files byte for byte, custom options and comments included).
    pub encoded_sets: Vec<Arc<[u8]>>,
    /// Served services whose files carry no comments (built without source
    /// info): reflection describes them without comments. Worth a warning.
    pub uncommented: Vec<String>,
}

impl Apis {
    /// Whether any user service is served.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Every method's route.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.methods.values().map(|m| m.route.as_str())
    }
}

impl ApiArgs {
    /// Loads the descriptor sets and resolves every service, method, route
    /// and encoding. `process_routes` are the `--routes` entries, which a
    /// method route may not reuse.
    pub fn load(&self, process_routes: &BTreeSet<String>) -> Result<Apis, ApiError> {
        if self.descriptor_sets.is_empty() && self.services.is_empty() {
            let routed = self.method_routes.first().or(self.transcode_json.first());
            if let Some(name) = routed {
                return Err(ApiError::NotServed { flag: "a flag", name: name.clone(), what: "a method" });
            }
            if self.method_routes_file.is_some() {
                return Err(ApiError::NoServices);
            }
            return Ok(Apis::default());
        }
        if self.descriptor_sets.is_empty() {
            return Err(ApiError::NoDescriptorSets);
        }
        if self.services.is_empty() {
            return Err(ApiError::NoServices);
        }
        let (pool, encoded_sets) = read_sets(&self.descriptor_sets)?;

        let mut services = Vec::new();
        for name in self.services.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if OWN_SERVICES.contains(&name) {
                return Err(ApiError::OwnService(name.to_owned()));
            }
            let Some(service) = pool.get_service_by_name(name) else {
                let known: Vec<_> = pool.services().map(|s| s.full_name().to_owned()).collect();
                let known = if known.is_empty() { "no services".to_owned() } else { known.join(", ") };
                return Err(ApiError::UnknownService { name: name.to_owned(), known });
            };
            if !services.iter().any(|s: &ServiceDescriptor| s.full_name() == name) {
                services.push(service);
            }
        }
        let streaming: Vec<String> = services
            .iter()
            .flat_map(ServiceDescriptor::methods)
            .filter(|m| m.is_client_streaming() || m.is_server_streaming())
            .map(|m| format!("{} ({})", method_name(&m), streaming_kind(&m)))
            .collect();
        if !streaming.is_empty() {
            return Err(ApiError::Streaming(streaming.join(", ")));
        }

        let served: BTreeMap<String, MethodDescriptor> =
            services.iter().flat_map(ServiceDescriptor::methods).map(|m| (method_name(&m), m)).collect();
        let routes = self.route_overrides(&served)?;
        let json = self.json_methods(&services, &served)?;

        let mut methods = HashMap::new();
        let mut by_route: HashMap<String, String> = HashMap::new();
        for (name, method) in &served {
            let route = routes.get(name).cloned().unwrap_or_else(|| default_route(method));
            if !valid_route(&route) {
                return Err(ApiError::InvalidRoute { method: name.clone(), route });
            }
            if process_routes.contains(&route) {
                return Err(ApiError::RouteTaken { route, method: name.clone() });
            }
            if let Some(first) = by_route.insert(route.clone(), name.clone()) {
                return Err(ApiError::SameRoute { route, first, second: name.clone() });
            }
            let encoding = if json.contains(name) { Encoding::Json } else { Encoding::Protobuf };
            let method = Method { name: name.clone(), route, input: method.input(), output: method.output(), encoding };
            methods.insert(format!("/{name}"), Arc::new(method));
        }
        let uncommented = services
            .iter()
            .filter(|s| s.parent_file_descriptor_proto().source_code_info.is_none())
            .map(|s| s.full_name().to_owned())
            .collect();
        let services = services.iter().map(|s| s.full_name().to_owned()).collect();
        Ok(Apis { services, methods, encoded_sets, uncommented })
    }

    /// The `--method-route` entries and the routes file, by method.
    fn route_overrides(
        &self,
        served: &BTreeMap<String, MethodDescriptor>,
    ) -> Result<HashMap<String, String>, ApiError> {
        let mut entries: Vec<String> = self.method_routes.clone();
        if let Some(path) = &self.method_routes_file {
            let text = read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())?;
            entries.extend(
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned),
            );
        }
        let mut routes = HashMap::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (method, route) = entry.split_once('=').ok_or_else(|| ApiError::MethodRouteSyntax(entry.to_owned()))?;
            let (method, route) = (method.trim().trim_start_matches('/'), route.trim());
            if !method.contains('/') || route.is_empty() {
                return Err(ApiError::MethodRouteSyntax(entry.to_owned()));
            }
            if !served.contains_key(method) {
                return Err(ApiError::NotServed { flag: "--method-route", name: method.to_owned(), what: "a method" });
            }
            if routes.insert(method.to_owned(), route.to_owned()).is_some() {
                return Err(ApiError::DuplicateMethodRoute(method.to_owned()));
            }
        }
        Ok(routes)
    }

    /// The methods `--transcode-json` names, directly or by their service.
    fn json_methods(
        &self,
        services: &[ServiceDescriptor],
        served: &BTreeMap<String, MethodDescriptor>,
    ) -> Result<BTreeSet<String>, ApiError> {
        let mut json = BTreeSet::new();
        for name in self.transcode_json.iter().map(|n| n.trim().trim_start_matches('/')).filter(|n| !n.is_empty()) {
            if let Some(service) = services.iter().find(|s| s.full_name() == name) {
                json.extend(service.methods().map(|m| method_name(&m)));
            } else if served.contains_key(name) {
                json.insert(name.to_owned());
            } else {
                return Err(ApiError::NotServed {
                    flag: "--transcode-json",
                    name: name.to_owned(),
                    what: "a service or method",
                });
            }
        }
        Ok(json)
    }
}

/// The descriptor sets, resolved into one pool, and as read.
type Sets = (DescriptorPool, Vec<Arc<[u8]>>);

/// Reads every descriptor set into one pool. A file present in several sets
/// is taken once; two different files of the same name are an error.
fn read_sets(paths: &[PathBuf]) -> Result<Sets, ApiError> {
    let mut pool = DescriptorPool::new();
    let mut encoded = Vec::new();
    // prost-reflect skips a file whose name it has seen, even when its
    // content differs: compare them here, or the first version would win
    // without a word.
    let mut seen: HashMap<String, prost_types::FileDescriptorProto> = HashMap::new();
    for path in paths {
        let bytes = read(path)?;
        let invalid = |reason: String| ApiError::InvalidSet { path: path.display().to_string(), reason };
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice())
            .map_err(|e| invalid(format!("it does not decode ({e})")))?;
        if set.file.is_empty() {
            return Err(invalid("it holds no files".into()));
        }
        for file in &set.file {
            let name = file.name().to_owned();
            match seen.get(&name) {
                Some(earlier) if earlier != file => {
                    return Err(invalid(format!("its {name} differs from the one in an earlier descriptor set")));
                }
                Some(_) => {}
                None => {
                    seen.insert(name, file.clone());
                }
            }
        }
        pool.add_file_descriptor_set(set).map_err(|e| invalid(describe_pool_error(&e)))?;
        encoded.push(Arc::from(bytes));
    }
    Ok((pool, encoded))
}

/// prost-reflect's error, with the likely fix when an import is missing.
fn describe_pool_error(error: &prost_reflect::DescriptorError) -> String {
    let text = error.to_string();
    if text.contains("not been added") || text.contains("not found") {
        format!("{text} (was it built without --include_imports?)")
    } else {
        text
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::Read { path: path.display().to_string(), source })
}

/// `package.Service/Method`.
fn method_name(method: &MethodDescriptor) -> String {
    format!("{}/{}", method.parent_service().full_name(), method.name())
}

/// The default route of a method: its full name with a dot,
/// `package.Service.Method`.
fn default_route(method: &MethodDescriptor) -> String {
    method.full_name().to_owned()
}

fn streaming_kind(method: &MethodDescriptor) -> &'static str {
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (true, true) => "bidirectional streaming",
        (true, false) => "client streaming",
        _ => "server streaming",
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
        ServiceDescriptorProto, field_descriptor_proto::Type,
    };

    use super::*;

    fn message(name: &str) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.into()),
            field: vec![FieldDescriptorProto {
                name: Some("id".into()),
                number: Some(1),
                r#type: Some(Type::String as i32),
                json_name: Some("id".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn method(name: &str, streaming: bool) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(".shop.v1.Item".into()),
            output_type: Some(".shop.v1.Item".into()),
            server_streaming: Some(streaming),
            ..Default::default()
        }
    }

    fn set(methods: Vec<MethodDescriptorProto>) -> Vec<u8> {
        let file = FileDescriptorProto {
            name: Some("shop/v1/shop.proto".into()),
            package: Some("shop.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![message("Item")],
            service: vec![ServiceDescriptorProto { name: Some("Shop".into()), method: methods, ..Default::default() }],
            ..Default::default()
        };
        FileDescriptorSet { file: vec![file] }.encode_to_vec()
    }

    /// A directory of files for one test, removed when dropped.
    struct Files(PathBuf);

    impl Files {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("gateway-api-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn args(sets: Vec<PathBuf>, services: &[&str]) -> ApiArgs {
        ApiArgs {
            descriptor_sets: sets,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn load(args: &ApiArgs) -> Result<Apis, ApiError> {
        args.load(&BTreeSet::from(["echo".to_owned()]))
    }

    #[test]
    fn every_unary_method_is_served_on_its_default_route() {
        let files = Files::new("default");
        let path = files.write("shop.binpb", &set(vec![method("Get", false), method("Put", false)]));
        let apis = load(&args(vec![path], &["shop.v1.Shop"])).unwrap();
        assert_eq!(apis.services, ["shop.v1.Shop"]);
        let get = &apis.methods["/shop.v1.Shop/Get"];
        assert_eq!((get.name.as_str(), get.route.as_str()), ("shop.v1.Shop/Get", "shop.v1.Shop.Get"));
        assert_eq!(get.input.full_name(), "shop.v1.Item");
        assert_eq!(get.encoding, Encoding::Protobuf);
        assert_eq!(apis.methods.len(), 2);
    }

    #[test]
    fn routes_and_encodings_are_configurable() {
        let files = Files::new("routes");
        let path = files.write("shop.binpb", &set(vec![method("Get", false), method("Put", false)]));
        let table = files.write("routes", b"# table\n shop.v1.Shop/Put = shop-put \n\n");
        let mut a = args(vec![path], &["shop.v1.Shop"]);
        a.method_routes = vec!["/shop.v1.Shop/Get=shop-get".into()];
        a.method_routes_file = Some(table);
        a.transcode_json = vec!["shop.v1.Shop/Get".into()];
        let apis = load(&a).unwrap();
        let get = &apis.methods["/shop.v1.Shop/Get"];
        assert_eq!((get.route.as_str(), get.encoding), ("shop-get", Encoding::Json));
        let put = &apis.methods["/shop.v1.Shop/Put"];
        assert_eq!((put.route.as_str(), put.encoding), ("shop-put", Encoding::Protobuf));

        a.transcode_json = vec!["shop.v1.Shop".into()];
        assert!(load(&a).unwrap().methods.values().all(|m| m.encoding == Encoding::Json));
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_culprit() {
        let files = Files::new("bad");
        let good = files.write("shop.binpb", &set(vec![method("Get", false), method("Put", false)]));
        let streaming = files.write("stream.binpb", &set(vec![method("Get", false), method("Watch", true)]));
        let garbage = files.write("garbage.binpb", b"\xff\xff\xff not a descriptor set");
        let empty = files.write("empty.binpb", b"");

        let error = |a: ApiArgs| load(&a).unwrap_err().to_string();
        assert!(error(args(vec![files.0.join("missing.binpb")], &["shop.v1.Shop"])).contains("cannot read"));
        assert!(error(args(vec![garbage], &["shop.v1.Shop"])).contains("not a usable FileDescriptorSet"));
        assert!(error(args(vec![empty], &["shop.v1.Shop"])).contains("holds no files"));
        let unknown = error(args(vec![good.clone()], &["shop.v1.Nope"]));
        assert!(unknown.contains("\"shop.v1.Nope\"") && unknown.contains("define: shop.v1.Shop"), "{unknown}");
        assert!(error(args(vec![good.clone()], &[SERVICE_NAME])).contains("served by the gateway itself"));
        let stream = error(args(vec![streaming], &["shop.v1.Shop"]));
        assert!(stream.contains("shop.v1.Shop/Watch (server streaming)") && !stream.contains("Get"), "{stream}");
        assert!(error(args(vec![], &["shop.v1.Shop"])).contains("needs --descriptor-set"));
        assert!(error(args(vec![good.clone()], &[])).contains("no --service"));

        let with = |routes: &[&str], json: &[&str]| {
            let mut a = args(vec![good.clone()], &["shop.v1.Shop"]);
            a.method_routes = routes.iter().map(|r| (*r).to_owned()).collect();
            a.transcode_json = json.iter().map(|r| (*r).to_owned()).collect();
            a
        };
        let same = error(with(&["shop.v1.Shop/Get=one", "shop.v1.Shop/Put=one"], &[]));
        assert!(same.contains("shop.v1.Shop/Get and shop.v1.Shop/Put both map to route \"one\""), "{same}");
        let taken = error(with(&["shop.v1.Shop/Get=echo"], &[]));
        assert!(taken.contains("\"echo\"") && taken.contains("also in --routes"), "{taken}");
        assert!(error(with(&["shop.v1.Shop/Get=not ok"], &[])).contains("not a valid route"));
        assert!(error(with(&["shop.v1.Shop/Get"], &[])).contains("not of the form"));
        assert!(error(with(&["shop.v1.Shop/Nope=x"], &[])).contains("--method-route names \"shop.v1.Shop/Nope\""));
        assert!(error(with(&["shop.v1.Shop/Get=a", "shop.v1.Shop/Get=b"], &[])).contains("more than one"));
        assert!(error(with(&[], &["shop.v1.Other"])).contains("--transcode-json names"));
    }

    #[test]
    fn a_file_in_several_sets_is_loaded_once() {
        let files = Files::new("twice");
        let one = files.write("one.binpb", &set(vec![method("Get", false)]));
        let two = files.write("two.binpb", &set(vec![method("Get", false)]));
        assert_eq!(load(&args(vec![one.clone(), two], &["shop.v1.Shop"])).unwrap().methods.len(), 1);
        let other = files.write("other.binpb", &set(vec![method("Put", false)]));
        let error = load(&args(vec![one, other], &["shop.v1.Shop"])).unwrap_err().to_string();
        assert!(error.contains("its shop/v1/shop.proto differs from the one in an earlier descriptor set"), "{error}");
    }

    #[test]
    fn no_flags_no_apis() {
        assert!(load(&ApiArgs::default()).unwrap().is_empty());
        let a = ApiArgs { method_routes: vec!["shop.v1.Shop/Get=x".into()], ..Default::default() };
        assert!(load(&a).is_err(), "a method route with nothing served is a mistake");
    }
}
