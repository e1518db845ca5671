//! The per-request decisions of the outbound path, without sockets: which
//! service (authority), which rule and weighted subset (route), which
//! endpoint (P2C over peak-EWMA, and round robin).
//! `cargo bench -p raftmesh-dataplane-proxy --bench hot_path`; figures in
//! docs/benchmarks.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::AtomicUsize;

use criterion::{criterion_group, criterion_main, Criterion};
use raftmesh_dataplane_proxy::compiled::{compile, Identity, Source};
use raftmesh_dataplane_proxy::stats::StatsRegistry;

fn mesh(lb: &str) -> String {
    let mut y = String::from("kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n");
    for i in 0..8 {
        let v = if i < 6 { "v1" } else { "v2" };
        y += &format!(
            "---\nkind: Endpoint\nmetadata: {{name: web-{i}}}\nspec: {{service: web, address: 10.0.0.{i}, port: 15006, labels: {{version: {v}}}}}\n"
        );
    }
    y += &format!(
        "---\nkind: Route\nmetadata: {{name: web}}\nspec:\n  service: web\n  load_balancer: {lb}\n  rules:\n    - matches: [{{headers: {{x-canary: '1'}}}}]\n      backends: [{{subset: {{version: v2}}, weight: 100}}]\n    - matches: [{{path_prefix: /api}}]\n      backends: [{{subset: {{version: v1}}, weight: 90}}, {{subset: {{version: v2}}, weight: 10}}]\n    - backends: [{{subset: {{version: v1}}, weight: 100}}]\n"
    );
    y += "---\nkind: Policy\nmetadata: {name: web-deny}\nspec: {service: web, action: deny, from: ['spiffe://east.mesh/ns/default/sa/batch'], to: [{methods: [POST]}]}\n";
    y
}

fn config_for(lb: &str) -> raftmesh_dataplane_proxy::compiled::CompiledConfig {
    let resources: BTreeMap<_, _> = raftmesh_api::parse_documents(&mesh(lb))
        .unwrap()
        .into_iter()
        .map(|r| (r.key(), r))
        .collect();
    compile(
        1,
        Source::ConfigFile,
        resources,
        &Identity {
            namespace: "default".into(),
            service: "web".into(),
            cluster: String::new(),
            locality: String::new(),
        },
        &StatsRegistry::new(raftmesh_dataplane_proxy::metrics::Metrics::new()),
    )
}

fn hot_path(c: &mut Criterion) {
    use raftmesh_dataplane_proxy::{balance, route};
    for lb in ["p2c-ewma", "round-robin"] {
        let compiled = config_for(lb);
        let rr = AtomicUsize::new(0);
        let req = http::Request::get("http://web/api/items?id=7")
            .header("user-agent", "bench")
            .body(())
            .unwrap();
        c.bench_function(&format!("route+pick ({lb})"), |b| {
            b.iter(|| {
                let id = route::service_of(black_box(&req), "default").unwrap();
                let t = compiled.service(&id).unwrap();
                let (ri, bi) = route::choose(&t.rules, black_box(&req)).unwrap();
                let backend = &t.rules[ri].backends[bi];
                black_box(balance::pick(t, backend, &rr))
            })
        });
    }
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
