CREATE DATABASE IF NOT EXISTS egress;

CREATE TABLE IF NOT EXISTS egress.flows
(
    id FixedString(32),
    host String,
    bucket DateTime,
    class String,
    verdict String,
    direction String,
    protocol String,
    src_ip String,
    src_port UInt16,
    dst_ip String,
    dst_port UInt16,
    domain String,
    cname_chain String,
    country String,
    subdivision String,
    asn UInt32,
    as_org String,
    cloud_provider String,
    cloud_region String,
    site String,
    pid UInt32,
    comm String,
    uid UInt32,
    cgroup String,
    bytes UInt64,
    packets UInt64,
    first_seen DateTime,
    last_seen DateTime
)
ENGINE = ReplacingMergeTree()
PARTITION BY toDate(bucket)
ORDER BY (class, verdict, bucket, host, id);

CREATE TABLE IF NOT EXISTS egress.alerts
(
    id FixedString(32),
    time DateTime,
    host String,
    class String,
    severity String,
    action String,
    reason String,
    direction String,
    protocol String,
    pid UInt32,
    comm String,
    uid UInt32,
    cgroup String,
    dst_ip String,
    dst_port UInt16,
    domain String,
    cname_chain String,
    country String,
    subdivision String,
    asn UInt32,
    as_org String,
    cloud_provider String,
    cloud_region String,
    site String,
    bytes UInt64,
    packets UInt64,
    flows UInt64,
    first_seen DateTime,
    last_seen DateTime
)
ENGINE = ReplacingMergeTree()
PARTITION BY toDate(time)
ORDER BY (class, time, host, id);

CREATE TABLE IF NOT EXISTS egress.reports
(
    id FixedString(32),
    host String,
    seq UInt64,
    since DateTime,
    until DateTime,
    generated DateTime,
    class_filter String,
    bytes UInt64,
    violation_bytes UInt64,
    agent_not_running_ms UInt64,
    blind_ms UInt64,
    digest String,
    previous String,
    report String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(since)
ORDER BY (host, seq, id);
