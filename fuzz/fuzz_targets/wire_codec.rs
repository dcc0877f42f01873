//! Fuzzes everything a peer can make us decode: every `Wire<T>` type, and whole Registry and
//! Database messages as ractor would decode them from a network frame. Decoding must never
//! panic, and never allocate beyond the codec's limit.
#![no_main]

use customer_cluster::cluster::protocol::{
    CreateRequest, CustomerPage, DatabaseMsg, ListRequest, NodeInfo, RegistryMsg, RegistryStats,
    RouteRequest,
};
use customer_cluster::codec::Wire;
use customer_cluster::customer::{Customer, CustomerId};
use libfuzzer_sys::fuzz_target;
use ractor::BytesConvertable;
use ractor::message::SerializedMessage;

const REGISTRY_VARIANTS: &[&str] = &[
    "Hello",
    "Ping",
    "CreateCustomer",
    "Route",
    "ListCustomers",
    "Stats",
    "PlacementChanged",
    "Sweep",
    "Release",
];
const DATABASE_VARIANTS: &[&str] = &[
    "Ping",
    "GetCustomer",
    "Submit",
    "Settle",
    "ListCustomers",
];

fn decode_all(data: &[u8]) {
    let bytes = || data.to_vec();
    let _ = Wire::<RouteRequest>::from_bytes(bytes());
    let _ = Wire::<CreateRequest>::from_bytes(bytes());
    let _ = Wire::<NodeInfo>::from_bytes(bytes());
    let _ = Wire::<Customer>::from_bytes(bytes());
    let _ = Wire::<Option<Customer>>::from_bytes(bytes());
    let _ = Wire::<Vec<Customer>>::from_bytes(bytes());
    let _ = Wire::<CustomerPage>::from_bytes(bytes());
    let _ = Wire::<ListRequest>::from_bytes(bytes());
    let _ = Wire::<customer_cluster::storage::Write>::from_bytes(bytes());
    let _ = Wire::<RegistryStats>::from_bytes(bytes());
    let _ = Wire::<(CustomerId, u64)>::from_bytes(bytes());
    let _ = Wire::<String>::from_bytes(bytes());
}

fn decode_messages(data: &[u8]) {
    let variant_pick = data.first().copied().unwrap_or(0) as usize;
    let args = data.get(1..).unwrap_or_default().to_vec();
    let r = REGISTRY_VARIANTS[variant_pick % REGISTRY_VARIANTS.len()];
    let _ = <RegistryMsg as ractor::Message>::deserialize(SerializedMessage::Cast {
        variant: r.to_owned(),
        args: args.clone(),
        metadata: None,
    });
    let d = DATABASE_VARIANTS[variant_pick % DATABASE_VARIANTS.len()];
    let _ = <DatabaseMsg as ractor::Message>::deserialize(SerializedMessage::Cast {
        variant: d.to_owned(),
        args,
        metadata: None,
    });
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    decode_messages(data);
});
