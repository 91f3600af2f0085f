//! The full stack in front of a tonic gRPC service.
//!
//! `catalog.v1.Catalog` (from `examples/proto/catalog.proto`; the generated
//! code is committed in `examples/proto/catalog.rs` and regenerated with
//! `scripts/regen-proto.sh`) served by `tonic::transport::Server` with
//! `.layer(PerfStack::new())`. The example serves on `127.0.0.1:50051`, makes
//! a few calls with the generated client, and prints what each layer saw.
//!
//! What each layer does for gRPC:
//!
//! - **latency** labels each call by its method path
//!   (`/catalog.v1.Catalog/GetProduct`) and records its `grpc-status` as
//!   `rpc.grpc.status_code`, read from the headers or the trailers;
//! - **limit** sheds calls over the limit with HTTP 200 and `grpc-status: 14`
//!   (`UNAVAILABLE`), which clients see as `Code::Unavailable` and may retry;
//! - **cache** and **coalesce** pass every call through untouched: gRPC
//!   calls are `POST`s, which HTTP caching and coalescing never apply to.
//!   Caching or coalescing idempotent gRPC reads (`GetProduct` here) is not
//!   implemented; the two layers cost a method check per call.
//!
//! ```sh
//! cargo run --example tonic
//! ```

use std::{collections::HashMap, sync::RwLock, time::Duration};

use tonic::{transport::Server, Request, Response, Status};
use tower_perf::{latency::LatencyLayer, stack::PerfStack};

/// The code `scripts/regen-proto.sh` generated from `catalog.proto`.
#[allow(unreachable_pub)] // generated: public items in a private module
mod catalog {
    include!("proto/catalog.rs");
}

use catalog::{
    catalog_client::CatalogClient,
    catalog_server::{Catalog, CatalogServer},
    GetProductRequest, Product, PutProductResponse,
};

/// An in-memory catalog with a slow read path.
#[derive(Debug, Default)]
struct Store {
    products: RwLock<HashMap<String, Product>>,
}

#[tonic::async_trait]
impl Catalog for Store {
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        tokio::time::sleep(Duration::from_millis(20)).await; // the slow query
        let id = request.into_inner().id;
        let product = self.products.read().unwrap().get(&id).cloned();
        product
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no product {id:?}")))
    }

    async fn put_product(
        &self,
        request: Request<Product>,
    ) -> Result<Response<PutProductResponse>, Status> {
        let product = request.into_inner();
        let previous = self
            .products
            .write()
            .unwrap()
            .insert(product.id.clone(), product);
        Ok(Response::new(PutProductResponse {
            created: previous.is_none(),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stack = PerfStack::new().latency(LatencyLayer::new().summary());
    let limit = stack.limit_handle();
    let summary = stack.latency_summary().expect("summary() is enabled");

    let addr = "127.0.0.1:50051".parse()?;
    let server = tokio::spawn(
        Server::builder()
            .layer(stack)
            .add_service(CatalogServer::new(Store::default()))
            .serve(addr),
    );
    println!("serving catalog.v1.Catalog on {addr}");

    let mut client = loop {
        match CatalogClient::connect(format!("http://{addr}")).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let product = Product {
        id: "p1".into(),
        name: "a teapot".into(),
        price_cents: 1999,
    };
    let created = client.put_product(product).await?.into_inner().created;
    println!("PutProduct p1: created = {created}");
    for _ in 0..3 {
        let got = client
            .get_product(GetProductRequest { id: "p1".into() })
            .await?;
        println!("GetProduct p1: {:?}", got.into_inner().name);
    }
    let missing = client
        .get_product(GetProductRequest { id: "p2".into() })
        .await
        .unwrap_err();
    println!("GetProduct p2: {:?}", missing.code());

    let counters = limit.counters();
    println!(
        "limit {} (admitted {}, rejected {})",
        limit.limit(),
        counters.admitted,
        counters.rejected
    );
    for route in summary.routes() {
        println!(
            "{}: {} calls, p50 {:?}, p99 {:?}",
            route.route, route.count, route.p50, route.p99
        );
    }
    println!("still serving on {addr}; Ctrl-C to stop");
    server.await??;
    Ok(())
}
