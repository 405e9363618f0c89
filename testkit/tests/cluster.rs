//! A real three-node RabbitMQ cluster on loopback ([`testkit::PrivateCluster`],
//! never the machine's shared broker) and a real lapin client: a quorum
//! queue keeps the messages it confirmed and takes new ones when its leader
//! is SIGKILLed, and the killed member comes back into the cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use testkit::{PrivateCluster, cluster::ELECTION};

/// Bound on one AMQP step (connect, declare, a confirm) against a node that
/// is up; a publish during an election may wait for the new leader.
const STEP: Duration = Duration::from_secs(15);

async fn channel(url: &str) -> (Connection, Channel) {
    let connect = Connection::connect(url, ConnectionProperties::default());
    let connection = tokio::time::timeout(STEP, connect).await.expect("connect in time").unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

/// Publishes `body` to `queue` and waits for the broker's confirm: Ok(true)
/// for an ack, Err for a channel error or no confirm within `STEP`.
async fn publish_confirmed(channel: &Channel, queue: &str, body: &[u8]) -> Result<bool, String> {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let publish = async {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                properties,
            )
            .await?;
        confirm.await
    };
    match tokio::time::timeout(STEP, publish).await {
        Ok(Ok(confirmation)) => Ok(confirmation.is_ack() && confirmation.take_message().is_none()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no confirm within {STEP:?}")),
    }
}

/// Takes the next message from `queue`, acked; None if it is empty.
async fn get(channel: &Channel, queue: &str) -> Option<Vec<u8>> {
    let message = channel.basic_get(queue.into(), BasicGetOptions::default()).await.unwrap()?;
    channel.basic_ack(message.delivery.delivery_tag, BasicAckOptions::default()).await.unwrap();
    Some(message.delivery.data)
}

#[tokio::test]
async fn quorum_queue_survives_its_leader_killed_and_the_member_comes_back() {
    let started = Instant::now();
    let cluster = PrivateCluster::start(3).await;
    let start_took = started.elapsed();
    assert_eq!(cluster.running_nodes(0).await, vec![0, 1, 2], "node 0 counts all three running");
    assert!(cluster.url_list().split(',').eq(cluster.urls().iter().map(String::as_str)));

    // A quorum queue with a member on every node, declared through node 0.
    let queue = testkit::unique("cluster-qq");
    let (_first, on_first) = channel(&cluster.urls()[0]).await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    arguments.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(3));
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    on_first.queue_declare(queue.as_str().into(), durable, arguments).await.unwrap();
    assert_eq!(publish_confirmed(&on_first, &queue, b"before").await, Ok(true), "confirmed before the kill");

    let leader = cluster.leader_of(&queue).await;
    assert!(leader < 3);
    let killed = Instant::now();
    cluster.kill(leader).await;
    let kill_took = killed.elapsed();
    let probe = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(cluster.addr(leader))).await;
    assert!(matches!(probe, Ok(Err(_))), "the killed node still accepts connections: {probe:?}");

    // A survivor elects a new leader and takes and confirms a new message.
    let new_leader = cluster.leader_of(&queue).await;
    let elected = killed.elapsed();
    assert_ne!(new_leader, leader, "the killed node cannot lead");
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    let mut last = String::new();
    let mut on_survivor = None;
    while killed.elapsed() < ELECTION {
        let (connection, channel) = channel(&cluster.urls()[survivor]).await;
        match publish_confirmed(&channel, &queue, b"after").await {
            Ok(true) => {
                on_survivor = Some((connection, channel));
                break;
            }
            Ok(false) => panic!("the survivor nacked or returned the message"),
            // A channel closed by the broker mid-election: try a fresh one.
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirmed = killed.elapsed();
    let (_survivor_connection, on_survivor) =
        on_survivor.unwrap_or_else(|| panic!("no confirm through node {survivor} within {ELECTION:?}: {last}"));

    // Both messages are there, in order: the one confirmed before the kill
    // was not lost with the leader.
    assert_eq!(get(&on_survivor, &queue).await.as_deref(), Some(&b"before"[..]));
    assert_eq!(get(&on_survivor, &queue).await.as_deref(), Some(&b"after"[..]));
    assert_eq!(get(&on_survivor, &queue).await, None, "nothing else in the queue");

    // The killed node comes back as the same member.
    let restarting = Instant::now();
    cluster.restart(leader).await;
    let restart_took = restarting.elapsed();
    let cluster_ref = &cluster;
    testkit::eventually("the restarted node is running in the cluster again", ELECTION, || async move {
        cluster_ref.running_nodes(survivor).await == vec![0, 1, 2]
    })
    .await;
    let back = restarting.elapsed();
    assert_eq!(cluster.running_nodes(leader).await, vec![0, 1, 2], "the restarted node sees all three");

    println!(
        "cluster of 3 started in {start_took:.1?}; leader node {leader} killed in {kill_took:.1?}; \
         new leader node {new_leader} after {elected:.1?}; publish through node {survivor} confirmed after {confirmed:.1?}; \
         restart took {restart_took:.1?}, back in cluster_status after {back:.1?}; whole test {:.1?}",
        started.elapsed()
    );
}
