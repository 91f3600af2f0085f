//! A caching reverse proxy: hyper server -> `CacheLayer::new()` (defaults) ->
//! hyper-util client -> upstream. It is the target of the HTTP cache
//! conformance suite (`scripts/conformance.sh`), and a small real-world use of
//! the cache in front of any HTTP origin.
//!
//! ```text
//! cargo run --example cache_proxy -- --listen 127.0.0.1:8010 --upstream http://127.0.0.1:8000
//! ```

use std::{convert::Infallible, net::SocketAddr, process::ExitCode};

use http::{header, uri::PathAndQuery, HeaderMap, HeaderName, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tower::{service_fn, ServiceBuilder};
use tower_perf::cache::CacheLayer;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

const USAGE: &str = "usage: cache_proxy [--listen ADDR] [--upstream URL]\n\
    \n  --listen ADDR    address to serve on (default 127.0.0.1:8010)\
    \n  --upstream URL   origin to forward to (default http://127.0.0.1:8000)";

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are
/// never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

struct Args {
    listen: SocketAddr,
    upstream: Uri,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 8010)),
        upstream: Uri::from_static("http://127.0.0.1:8000"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                args.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--upstream" => {
                let v = value()?;
                let uri: Uri = v.parse().map_err(|e| format!("--upstream {v}: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(format!("--upstream {v}: expected http://host[:port]"));
                }
                args.upstream = uri;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!(
        "caching proxy on http://{} -> {}",
        args.listen, args.upstream
    );

    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let upstream = args.upstream.clone();
    let proxy = service_fn(move |mut req: Request<Incoming>| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            let mut parts = upstream.into_parts();
            parts.path_and_query = Some(
                req.uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            );
            // Scheme, authority and path are all set, so this cannot fail.
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            strip_hop_by_hop(req.headers_mut());
            let res = match client.request(req).await {
                Ok(res) => {
                    let (mut head, body) = res.into_parts();
                    strip_hop_by_hop(&mut head.headers);
                    Response::from_parts(head, body.boxed_unsync())
                }
                Err(e) => {
                    let mut res = Response::new(
                        Full::new(Bytes::from(format!("upstream error: {e}\n")))
                            .map_err(|never: Infallible| match never {})
                            .boxed_unsync(),
                    );
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    res
                }
            };
            Ok::<Response<Body>, Infallible>(res)
        }
    });
    let service = ServiceBuilder::new()
        .layer(CacheLayer::new())
        .service(proxy);

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
