//! One DNS message, parsed (with hickory-proto: compressed names, CNAME chains) into what names
//! flows: the name asked for, and each address it resolved to with the CNAME chain that led
//! there and how long the answer may be used.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData},
};

/// CNAME links followed at most from the name asked for to an address.
const MAX_CHAIN: usize = 16;

/// The addresses a DNS answer gives for the name asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name asked for (lower case, no trailing dot).
    pub domain: Arc<str>,
    pub addresses: Vec<Resolution>,
}

/// One address of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub ip: IpAddr,
    /// The CNAME targets from the name asked for to the name holding the address, in order
    /// (empty when the name itself holds it).
    pub cname_chain: Vec<Arc<str>>,
    /// The smallest TTL along the chain, in seconds.
    pub ttl: u32,
}

/// What a DNS message from port 53 turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A response naming at least one address.
    Answer(Answer),
    /// Well formed but naming no address: a query, an error (NXDOMAIN), a name with no A or
    /// AAAA record, a response to another kind of question.
    NoAddress,
}

/// Parses one DNS message. An error says why it is malformed (truncated, a bad name, a
/// compression loop...).
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let m = Message::from_vec(bytes).map_err(|e| e.to_string())?;
    if m.metadata.message_type != MessageType::Response || m.metadata.response_code != ResponseCode::NoError {
        return Ok(Parsed::NoAddress);
    }
    let Some(question) = m.queries.first() else { return Ok(Parsed::NoAddress) };
    let asked = text(question.name());
    // CNAMEs by owner; the first for an owner wins (a second would be a broken answer).
    let mut cnames: HashMap<String, (String, u32)> = HashMap::new();
    for r in &m.answers {
        if let RData::CNAME(c) = &r.data {
            cnames.entry(text(&r.name)).or_insert((text(&c.0), r.ttl));
        }
    }
    let mut addresses = Vec::new();
    for r in &m.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        let owner = text(&r.name);
        // From the name asked for along the CNAMEs to this record's owner; an address of a
        // name the question does not lead to answers nothing that was asked.
        let (mut at, mut chain, mut ttl) = (asked.as_str(), Vec::new(), r.ttl);
        while at != owner {
            let Some((target, t)) = cnames.get(at) else { break };
            if chain.len() == MAX_CHAIN {
                break;
            }
            chain.push(Arc::<str>::from(target.as_str()));
            ttl = ttl.min(*t);
            at = target;
        }
        if at == owner {
            addresses.push(Resolution { ip, cname_chain: chain, ttl });
        }
    }
    if addresses.is_empty() {
        return Ok(Parsed::NoAddress);
    }
    Ok(Parsed::Answer(Answer { domain: asked.into(), addresses }))
}

/// A name as records show it: lower case, ASCII (IDNs in punycode, unusual bytes escaped), no
/// trailing dot; the root is ".".
fn text(name: &Name) -> String {
    let s = name.to_lowercase().to_ascii();
    match s.strip_suffix('.') {
        Some("") | None => s,
        Some(t) => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{
        op::{Message, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata},
    };

    use super::*;

    /// A response to `question` (type A) holding `records` (owner, data, ttl).
    pub fn response(question: &str, records: &[(&str, RData, u32)]) -> Vec<u8> {
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(Name::from_str(question).unwrap(), RecordType::A));
        for (owner, data, ttl) in records {
            m.add_answer(Record::from_rdata(Name::from_str(owner).unwrap(), *ttl, data.clone()));
        }
        m.to_vec().unwrap()
    }

    fn cname(target: &str) -> RData {
        RData::CNAME(rdata::CNAME(Name::from_str(target).unwrap()))
    }

    fn a(ip: &str) -> RData {
        RData::A(rdata::A(ip.parse().unwrap()))
    }

    #[test]
    fn follows_a_cname_chain_to_each_address_with_the_smallest_ttl() {
        let bytes = response(
            "API.Example.com.",
            &[
                ("api.example.com.", cname("edge.cdn.example.net."), 300),
                ("edge.cdn.example.net.", cname("pop7.cdn.example.net."), 60),
                ("pop7.cdn.example.net.", a("175.16.199.10"), 120),
                ("pop7.cdn.example.net.", RData::AAAA(rdata::AAAA("2001:db8::7".parse().unwrap())), 30),
                // Not on the question's path: ignored.
                ("other.example.org.", a("192.0.2.99"), 300),
            ],
        );
        let Parsed::Answer(answer) = parse(&bytes).unwrap() else { panic!("no answer") };
        assert_eq!(&*answer.domain, "api.example.com");
        let chain: Vec<Arc<str>> = vec!["edge.cdn.example.net".into(), "pop7.cdn.example.net".into()];
        assert_eq!(
            answer.addresses,
            vec![
                Resolution { ip: "175.16.199.10".parse().unwrap(), cname_chain: chain.clone(), ttl: 60 },
                Resolution { ip: "2001:db8::7".parse().unwrap(), cname_chain: chain, ttl: 30 },
            ]
        );
    }

    #[test]
    fn a_direct_answer_has_no_chain() {
        let bytes = response("db.example.com.", &[("db.example.com.", a("192.0.2.1"), 5)]);
        let Parsed::Answer(answer) = parse(&bytes).unwrap() else { panic!("no answer") };
        assert_eq!(answer.addresses[0].cname_chain, Vec::<Arc<str>>::new());
        assert_eq!(answer.addresses[0].ttl, 5);
    }

    #[test]
    fn queries_errors_and_loops_name_nothing() {
        let mut q = Message::new(1, hickory_proto::op::MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_str("x.example.").unwrap(), RecordType::A));
        assert_eq!(parse(&q.to_vec().unwrap()), Ok(Parsed::NoAddress));
        let looped = response(
            "a.example.",
            &[("a.example.", cname("b.example."), 60), ("b.example.", cname("a.example."), 60)],
        );
        assert_eq!(parse(&looped), Ok(Parsed::NoAddress));
    }

    #[test]
    fn truncated_and_garbage_messages_are_errors() {
        let bytes = response("db.example.com.", &[("db.example.com.", a("192.0.2.1"), 5)]);
        for n in [0, 5, 12, bytes.len() - 1] {
            assert!(parse(&bytes[..n]).is_err(), "{n} bytes");
        }
        // A compression pointer to itself.
        let mut looped = bytes[..12].to_vec();
        looped[5] = 1; // one question
        looped.extend([0xc0, 12, 0, 1, 0, 1]);
        assert!(parse(&looped).is_err());
    }
}
