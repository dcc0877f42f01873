//! `GET /v1/events` (Server-Sent Events) and `GET /v1/cluster/shards`: what the dashboard and
//! `customer-cluster events` watch.
//!
//! A new stream first replays the node's recent events (up to [`RECENT_EVENTS`](crate::events::RECENT_EVENTS), oldest
//! first), then sends every new one as it happens: one SSE `data:` line of [`ClusterEvent`]
//! JSON per event, with a keep-alive comment every 15 s. A subscriber that falls more than
//! [`SUBSCRIBER_BUFFER`](crate::events::SUBSCRIBER_BUFFER) events behind is dropped: its
//! stream ends with one final `event: dropped` whose data says how many it missed. The stream
//! also ends when the node stops, and when it is `--event-stream-max-age-s` old (an hour by
//! default): the client reconnects and gets the recent events replayed.
//!
//! Streams are capped apart from connections: `--max-event-streams` in all (one more is
//! answered 503) and `--max-event-streams-per-client` per source address (429), so watchers
//! cannot take the connection slots that requests and `/health` need. A stream the client
//! stops reading is closed by the server's stall timeout (`server::STREAM_STALL`).

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::error::{ApiError, ErrorBody, RETRY_AFTER_SECS};
use super::limits::{Held, Refusal};
use super::model::{ShardJson, ShardMapJson};
use crate::actors::shard_map::ShardMap;
use crate::events::ClusterEvent;

/// `GET /v1/events`
#[utoipa::path(get, path = "/v1/events", tag = "cluster",
    responses(
        (status = 200, description = "text/event-stream: the recent events, then each new one as it happens; each `data:` line is one ClusterEvent. A subscriber that falls behind gets a final `event: dropped` and the stream ends.",
            content_type = "text/event-stream", body = ClusterEvent),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 429, description = "This address holds --max-event-streams-per-client streams already", body = ErrorBody),
        (status = 503, description = "--max-event-streams streams are open on this node", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn events(State(s): State<AppState>, req: Request) -> Response {
    let held = match s.streams.admit(super::server::client_ip(req.extensions())) {
        Ok(held) => held,
        Err(why) => {
            metrics::counter!("customer_event_streams_refused_total", "reason" => why.label())
                .increment(1);
            return refusal(why).into_response();
        }
    };
    let slot = StreamSlot::new(held);
    let (replay, live) = s.gateway.events().subscribe();
    let events = feed(replay.into(), live)
        .take_until(tokio::time::sleep(s.stream_max_age))
        .map(move |event| {
            let _ = &slot;
            event
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// An open stream's entry in the stream caps, counted in `customer_event_streams_open`;
/// given back when the stream's body is dropped (ended, or the connection closed).
struct StreamSlot(#[allow(dead_code)] Held);

impl StreamSlot {
    fn new(held: Held) -> Self {
        metrics::gauge!("customer_event_streams_open").increment(1.0);
        Self(held)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!("customer_event_streams_open").decrement(1.0);
    }
}

fn refusal(why: Refusal) -> ApiError {
    match why {
        Refusal::PerClient => ApiError::TooManyRequests {
            message: "too many event streams open from this address; close one first".into(),
            retry_after: RETRY_AFTER_SECS,
        },
        Refusal::OverCap => ApiError::Service(crate::error::Error::Unavailable(
            "too many event streams open on this node; retry later".into(),
        )),
    }
}

/// What one stream still has to send.
struct Feed {
    replay: VecDeque<ClusterEvent>,
    live: Receiver<ClusterEvent>,
    ended: bool,
}

/// The replay, then the live events, then (if it lagged) the final `dropped` event.
fn feed(
    replay: VecDeque<ClusterEvent>,
    live: Receiver<ClusterEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = Feed {
        replay,
        live,
        ended: false,
    };
    futures::stream::unfold(start, |mut feed| async move {
        let event = next_event(&mut feed).await?;
        Some((Ok(event), feed))
    })
}

async fn next_event(feed: &mut Feed) -> Option<Event> {
    if feed.ended {
        return None;
    }
    if let Some(event) = feed.replay.pop_front() {
        return Some(data(&event));
    }
    match feed.live.recv().await {
        Ok(event) => Some(data(&event)),
        Err(RecvError::Lagged(missed)) => {
            feed.ended = true;
            metrics::counter!("customer_event_subscribers_dropped_total").increment(1);
            let why = serde_json::json!({ "missed": missed, "reason": "subscriber fell behind" });
            Some(Event::default().event("dropped").data(why.to_string()))
        }
        Err(RecvError::Closed) => None,
    }
}

fn data(event: &ClusterEvent) -> Event {
    let json = serde_json::to_string(event).unwrap_or_default();
    Event::default().data(json)
}

/// `GET /v1/cluster/shards`
#[utoipa::path(get, path = "/v1/cluster/shards", tag = "cluster",
    responses(
        (status = 200, description = "All 1024 shards: placement owner and lease holder/state as this node sees them", body = ShardMapJson),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn shards(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(shard_map_json(s.gateway.shard_map().await)).into_response())
}

fn shard_map_json(map: ShardMap) -> ShardMapJson {
    ShardMapJson {
        node: map.node,
        epoch: map.epoch,
        shards: map
            .shards
            .into_iter()
            .map(|r| ShardJson {
                shard: r.shard,
                owner: r.owner,
                holder: r.holder,
                token: r.token,
                state: r.state.to_owned(),
            })
            .collect(),
    }
}
