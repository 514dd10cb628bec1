//! The outbound proxy's routing of an app's request head: httparse (as hyper) reads it, then
//! Signet picks the service and builds the upstream URI. Any head routes or is refused.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use signet_proxy::outbound::route_target;
use signet_proxy::services::{Service, ServiceTable};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(data), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let Some(Ok(uri)) = req.path.map(|p| p.parse::<Uri>()) else {
        return;
    };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(name, value);
        }
    }
    let mut services = ServiceTable::default();
    services.insert(Service::new("httpbin.foo:8000", "127.0.0.1:15006".into(), None).unwrap());
    if let Ok((service, upstream)) = route_target(&services, &uri, &map) {
        assert_eq!(upstream.authority().map(|a| a.as_str()), Some(service.name.as_str()));
        assert_eq!(upstream.scheme_str(), Some("http"));
    }
});
