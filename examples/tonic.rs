//! The full stack in front of a tonic gRPC service.
//!
//! `catalog.v1.Catalog` (from `examples/proto/catalog.proto`; the generated
//! code is committed in `examples/proto/catalog.rs` and regenerated with
//! `scripts/regen-proto.sh`) served by `tonic::transport::Server` with
//! `.layer(PerfStack::new().grpc_reads(..))`. The example serves on
//! `127.0.0.1:50051`, makes a few calls with the generated client, and prints
//! what each layer saw.
//!
//! What each layer does for gRPC:
//!
//! - **latency** labels each call by its method path
//!   (`/catalog.v1.Catalog/GetProduct`) and records its `grpc-status` as
//!   `rpc.grpc.status_code`, read from the headers or the trailers;
//! - **limit** sheds calls over the limit with HTTP 200 and `grpc-status: 14`
//!   (`UNAVAILABLE`), which clients see as `Code::Unavailable` and may retry;
//! - **cache** and **coalesce** handle only the idempotent reads declared
//!   with `GrpcReads` (`GetProduct` here), keyed by method and request
//!   message: identical calls in flight share one handler call, and a
//!   successful answer is replayed (with its trailers) for 30 s. Errors
//!   (`NOT_FOUND` below), undeclared methods (`PutProduct`) and every other
//!   call pass through untouched. `PutProduct` purges the stored reads of
//!   the method through the cache handle.
//!
//! ```sh
//! cargo run --example tonic
//! ```

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use tonic::{transport::Server, Request, Response, Status};
use tower_perf::{cache::CacheHandle, grpc::GrpcReads, latency::LatencyLayer, stack::PerfStack};

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

const GET_PRODUCT: &str = "/catalog.v1.Catalog/GetProduct";

/// An in-memory catalog with a slow read path.
#[derive(Debug)]
struct Store {
    products: RwLock<HashMap<String, Product>>,
    /// `GetProduct` calls that reached the handler.
    reads: Arc<AtomicUsize>,
    /// Drops the cached reads when a product changes.
    purge: CacheHandle,
}

#[tonic::async_trait]
impl Catalog for Store {
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        self.reads.fetch_add(1, Ordering::Relaxed);
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
        // Reads are keyed by their message: purge the method's entries.
        self.purge.purge_path_prefix(GET_PRODUCT);
        Ok(Response::new(PutProductResponse {
            created: previous.is_none(),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // GetProduct is an idempotent read: cached for 30 s and coalesced.
    let reads = GrpcReads::new()
        .method(GET_PRODUCT)
        .ttl(Duration::from_secs(30));
    let stack = PerfStack::new()
        .latency(LatencyLayer::new().summary())
        .grpc_reads(reads);
    let limit = stack.limit_handle();
    let summary = stack.latency_summary().expect("summary() is enabled");
    let backend_reads = Arc::new(AtomicUsize::new(0));
    let store = Store {
        products: RwLock::default(),
        reads: backend_reads.clone(),
        purge: stack.cache_handle(),
    };

    let addr = "127.0.0.1:50051".parse()?;
    let server = tokio::spawn(
        Server::builder()
            .layer(stack)
            .add_service(CatalogServer::new(store))
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
    // Ten identical reads at once: one reaches the handler, the others
    // share its answer.
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .get_product(GetProductRequest { id: "p1".into() })
                    .await
            })
        })
        .collect();
    for call in burst {
        call.await??;
    }
    println!(
        "10 concurrent GetProduct p1: {} handler call(s)",
        backend_reads.load(Ordering::Relaxed)
    );
    // Then answered from the cache.
    for _ in 0..3 {
        let got = client
            .get_product(GetProductRequest { id: "p1".into() })
            .await?;
        let status = got.metadata().get("cache-status").cloned();
        println!("GetProduct p1: {:?} ({status:?})", got.into_inner().name);
    }
    // Errors are never stored: both calls reach the handler.
    for _ in 0..2 {
        let missing = client
            .get_product(GetProductRequest { id: "p2".into() })
            .await
            .unwrap_err();
        println!("GetProduct p2: {:?}", missing.code());
    }
    println!(
        "GetProduct calls that reached the handler: {} of 15",
        backend_reads.load(Ordering::Relaxed)
    );

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
