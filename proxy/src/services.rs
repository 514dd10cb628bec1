//! The service table: `host:port` as the app names it → the peer sidecar's address and the
//! SPIFFE ID it must present.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use signet_certs::SpiffeId;

use crate::config::Protocol;

/// Why a service table entry is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0:?} is not a host:port service name (e.g. httpbin.foo:8000)")]
    BadName(String),
    #[error("address {0:?} needs a port (e.g. 127.0.0.1:15006)")]
    NoPort(String),
    #[error("{0:?} is not a valid DNS name or IP address")]
    BadHost(String),
    #[error("address {0:?} is not an ip:port (e.g. 10.96.0.10:8000)")]
    BadVirtualAddress(String),
}

#[derive(Clone, Debug)]
pub struct Service {
    /// Canonical `host:port` (lowercase host, explicit port).
    pub name: String,
    /// Where the peer sidecar's inbound listens (`ip:port` or `host:port`).
    pub address: String,
    /// Who the peer must be; `None` accepts any identity of our own signer.
    pub identity: Option<SpiffeId>,
    /// Sent as SNI; the service's host.
    pub server_name: ServerName<'static>,
    /// The `ip:port`s an app may dial for this service (captured outbound): its virtual
    /// addresses, and `address` itself when it is one.
    pub addresses: Vec<SocketAddr>,
    /// How the captured outbound carries it (`auto`: by the app's first bytes).
    pub protocol: Protocol,
    /// `name` as the `Host` header the peer is sent, built once.
    pub host: http::HeaderValue,
    /// `name`, shared: the key of this service's idle connections.
    pub key: Arc<str>,
}

impl Service {
    pub fn new(name: &str, address: String, identity: Option<SpiffeId>) -> Result<Self, ServiceError> {
        let name = normalize(name).ok_or_else(|| ServiceError::BadName(name.to_string()))?;
        if address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ServiceError::NoPort(address));
        }
        let host = host_of(&name);
        let server_name =
            ServerName::try_from(host.to_string()).map_err(|_| ServiceError::BadHost(host.to_string()))?;
        let host_header = http::HeaderValue::from_str(&name).map_err(|_| ServiceError::BadName(name.clone()))?;
        let addresses = address.parse().into_iter().collect();
        Ok(Service {
            key: Arc::from(name.as_str()),
            name,
            address,
            identity,
            server_name,
            addresses,
            protocol: Protocol::Auto,
            host: host_header,
        })
    }

    /// Sets how the captured outbound carries this service.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Adds a virtual `ip:port` the app may dial for this service.
    pub fn with_address(mut self, address: &str) -> Result<Self, ServiceError> {
        let addr = address
            .trim()
            .parse()
            .map_err(|_| ServiceError::BadVirtualAddress(address.to_string()))?;
        if !self.addresses.contains(&addr) {
            self.addresses.push(addr);
        }
        Ok(self)
    }
}

#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    by_name: HashMap<String, Arc<Service>>,
    by_address: HashMap<SocketAddr, Arc<Service>>,
}

impl ServiceTable {
    pub fn insert(&mut self, service: Service) {
        let service = Arc::new(service);
        for a in &service.addresses {
            self.by_address.insert(*a, service.clone());
        }
        self.by_name.insert(service.name.clone(), service);
    }

    /// The service an app reaches by dialling `addr` (captured outbound).
    pub fn by_address(&self, addr: SocketAddr) -> Option<Arc<Service>> {
        self.by_address.get(&addr).cloned()
    }

    /// Looks up a `host[:port]` target as an app sends it (`Host:` or absolute URI); port 80 if absent.
    pub fn get(&self, target: &str) -> Option<Arc<Service>> {
        // Apps mostly name a service as the table does: no normalizing (and no allocation) then.
        if let Some(service) = self.by_name.get(target) {
            return Some(service.clone());
        }
        self.by_name.get(&normalize(target)?).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn normalize(target: &str) -> Option<String> {
    let a = target.trim().to_ascii_lowercase();
    if a.is_empty() || a.contains(['/', ' ', '@']) {
        return None;
    }
    // [v6]:port, host:port, or a bare host.
    let has_port = match a.rfind(':') {
        Some(i) => a[i + 1..].parse::<u16>().is_ok() && (!a.contains('[') || a[..i].ends_with(']')),
        None => false,
    };
    Some(if has_port { a } else { format!("{a}:80") })
}

fn host_of(name: &str) -> &str {
    let host = name.rsplit_once(':').map(|(h, _)| h).unwrap_or(name);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_normalize_case_and_default_port() {
        let mut t = ServiceTable::default();
        t.insert(Service::new("httpbin.foo:8000", "127.0.0.1:15006".into(), None).unwrap());
        t.insert(Service::new("web.bar", "127.0.0.1:15007".into(), None).unwrap());
        assert!(t.get("HTTPBIN.foo:8000").is_some());
        assert!(t.get("httpbin.foo").is_none());
        assert_eq!(t.get("web.bar:80").unwrap().address, "127.0.0.1:15007");
        assert!(t.get("web.bar").is_some());
    }

    #[test]
    fn bad_entries_say_why() {
        assert!(
            Service::new("httpbin.foo:8000", "127.0.0.1".into(), None)
                .unwrap_err()
                .to_string()
                .contains("needs a port")
        );
        assert!(Service::new("", "127.0.0.1:1".into(), None).is_err());
    }
}
