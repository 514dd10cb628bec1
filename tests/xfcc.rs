//! The caller's identity reaches the app in `x-forwarded-client-cert`, and an app cannot forge it.

mod support;

use support::*;

#[test]
fn httpbin_sees_the_callers_spiffe_id_and_forgeries_are_dropped() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let (_server, client) = mesh.http_pair(app.addr);
    let proxy = format!("http://{}", client.outbound.unwrap());
    let forged = "X-Forwarded-Client-Cert: By=spiffe://evil;URI=spiffe://cluster.local/ns/kube-system/sa/admin";
    let r = curl(
        &["-H", forged, "http://httpbin.foo:8000/headers"],
        &[("http_proxy", proxy.as_str())],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let json: serde_json::Value = serde_json::from_str(&r.body).expect("httpbin JSON");
    let xfcc = json["headers"]["X-Forwarded-Client-Cert"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", r.body));
    assert!(
        xfcc.starts_with("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash="),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";Subject=\"\";URI=spiffe://cluster.local/ns/foo/sa/curl"),
        "{xfcc}"
    );
    assert!(
        !xfcc.contains("evil") && !xfcc.contains("kube-system"),
        "forgery kept: {xfcc}"
    );
    assert_eq!(json["headers"]["Host"], "httpbin.foo:8000");
}
