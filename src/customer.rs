//! The customer domain: what a customer is, which inputs are valid, and how writes change it.
//!
//! Everything here is pure: no actors, no I/O, no clock (callers pass `now`). The same rules
//! run on the entry node (to reject bad input before any network hop) and on the owner node
//! (the authority, right before the compare-and-set write).
//!
//! Times are microseconds since the Unix epoch (UTC) in the domain, on the wire and in the
//! database; the API formats them as RFC 3339.
//!
//! Deliberately not here: JSON shapes (`api::model`), SQL rows (`storage`), wire envelopes
//! (`cluster::protocol`). Each boundary converts at its edge.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest accepted customer name, in characters (not bytes: names are Unicode).
pub const MAX_NAME_CHARS: usize = 200;
/// Longest accepted email address, in characters (RFC 5321 path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest accepted phone number, in characters.
pub const MAX_PHONE_CHARS: usize = 32;
/// Longest accepted postal address, in characters.
pub const MAX_ADDRESS_CHARS: usize = 500;

/// A customer id: a UUID v7, chosen by the node that receives the create, so the id and its
/// owner are known before anything is stored.
pub type CustomerId = Uuid;

/// Generates a fresh customer id (UUID v7: time-ordered, so keyset pagination roughly follows
/// creation order and SQLite's primary-key b-tree appends instead of splitting at random).
pub fn new_customer_id() -> CustomerId {
    Uuid::now_v7()
}

/// Parses a customer id from a URL path segment or CLI argument.
/// An id that is not a UUID is echoed back in the error, cut to a readable length.
pub fn parse_customer_id(raw: &str) -> Result<CustomerId> {
    const ECHO_CHARS: usize = 64;
    Uuid::try_parse(raw).map_err(|_| {
        let shown = match raw.char_indices().nth(ECHO_CHARS) {
            Some((cut, _)) => format!("{:?}… ({} characters)", &raw[..cut], raw.chars().count()),
            None => format!("{raw:?}"),
        };
        Error::InvalidInput(format!("malformed customer id {shown}: expected a UUID"))
    })
}

/// The user-editable fields of a customer, validated: holding one means the rules below passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerFields {
    /// Display name, 1..=200 characters after trimming.
    pub name: String,
    /// Email address as typed; unique across live customers by its [`email_key`].
    pub email: String,
    /// Optional phone number: digits, spaces and `+-().`, at most 32 characters.
    pub phone: Option<String>,
    /// Optional free-form postal address, at most 500 characters.
    pub address: Option<String>,
}

/// A stored customer: its fields plus identity and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Primary key.
    pub id: CustomerId,
    /// The editable fields.
    pub fields: CustomerFields,
    /// Starts at 1 and grows by exactly 1 per acknowledged write; the compare-and-set token.
    pub version: u64,
    /// Creation time, µs since the Unix epoch.
    pub created_at: i64,
    /// Time of the last write, µs since the Unix epoch.
    pub updated_at: i64,
}

impl Customer {
    /// A new customer at version 1.
    pub fn new(id: CustomerId, fields: CustomerFields, now: i64) -> Self {
        Self {
            id,
            fields,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// The customer after a successful write of `fields`: next version, new `updated_at`.
    pub fn next_version(&self, fields: CustomerFields, now: i64) -> Self {
        Self {
            id: self.id,
            fields,
            version: self.version + 1,
            created_at: self.created_at,
            updated_at: now.max(self.updated_at),
        }
    }
}

/// What the client sent for the fields, before validation (create and full replace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldsInput {
    /// Raw name.
    pub name: Option<String>,
    /// Raw email.
    pub email: Option<String>,
    /// Raw phone; empty means none.
    pub phone: Option<String>,
    /// Raw address; empty means none.
    pub address: Option<String>,
}

/// One field of a JSON merge patch (RFC 7396): absent, `null`, or a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldPatch {
    /// The member was absent: keep the current value.
    #[default]
    Keep,
    /// The member was `null`: remove the value (only allowed for optional fields).
    Clear,
    /// The member had a value: replace.
    Set(String),
}

/// A JSON merge patch of the customer fields, already decoded from JSON into typed members so
/// it can cross nodes in the binary codec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerPatch {
    /// Patch of `name`.
    pub name: FieldPatch,
    /// Patch of `email`.
    pub email: FieldPatch,
    /// Patch of `phone`.
    pub phone: FieldPatch,
    /// Patch of `address`.
    pub address: FieldPatch,
}

impl CustomerPatch {
    /// True when the patch changes nothing (an empty JSON object).
    pub fn is_empty(&self) -> bool {
        [&self.name, &self.email, &self.phone, &self.address]
            .iter()
            .all(|p| matches!(p, FieldPatch::Keep))
    }

    /// Applies the patch to `current` and validates the result.
    pub fn apply(&self, current: &CustomerFields) -> Result<CustomerFields> {
        let required = |patch: &FieldPatch, field: &str, cur: &str| match patch {
            FieldPatch::Keep => Ok(Some(cur.to_owned())),
            FieldPatch::Clear => Err(Error::InvalidInput(format!("{field} cannot be null"))),
            FieldPatch::Set(v) => Ok(Some(v.clone())),
        };
        let optional = |patch: &FieldPatch, cur: &Option<String>| match patch {
            FieldPatch::Keep => cur.clone(),
            FieldPatch::Clear => None,
            FieldPatch::Set(v) => Some(v.clone()),
        };
        validate(FieldsInput {
            name: required(&self.name, "name", &current.name)?,
            email: required(&self.email, "email", &current.email)?,
            phone: optional(&self.phone, &current.phone),
            address: optional(&self.address, &current.address),
        })
    }
}

/// Validates raw input into [`CustomerFields`]: trims, checks presence, lengths and syntax.
/// Every invalid field is reported (joined with "; "), so a client fixes a form in one round.
pub fn validate(input: FieldsInput) -> Result<CustomerFields> {
    let mut problems = Vec::new();
    let mut keep = |r: Result<Option<String>>| {
        r.unwrap_or_else(|e| {
            problems.push(match e {
                Error::InvalidInput(m) => m,
                other => other.to_string(),
            });
            None
        })
    };
    let name = keep(required_text(input.name, "name", MAX_NAME_CHARS).map(Some));
    let email = keep(
        required_text(input.email, "email", MAX_EMAIL_CHARS)
            .and_then(|e| check_email(&e).map(|()| Some(e))),
    );
    let phone = keep(
        optional_text(input.phone, "phone", MAX_PHONE_CHARS)
            .and_then(|p| p.map_or(Ok(None), |p| check_phone(&p).map(|()| Some(p)))),
    );
    let address = keep(optional_text(input.address, "address", MAX_ADDRESS_CHARS));
    match (name, email) {
        (Some(name), Some(email)) if problems.is_empty() => Ok(CustomerFields {
            name,
            email,
            phone,
            address,
        }),
        _ => Err(Error::InvalidInput(problems.join("; "))),
    }
}

/// Checks fields that arrive as already validated — from a peer over the cluster, at the
/// Database actor — against the rules of [`validate`]: `Ok` only when validating them again
/// gives exactly these fields. A peer holding the cluster cookie can send any bytes, so
/// holding a [`CustomerFields`] proves nothing once it has crossed the network.
pub fn revalidate(fields: &CustomerFields) -> Result<()> {
    let again = validate(FieldsInput {
        name: Some(fields.name.clone()),
        email: Some(fields.email.clone()),
        phone: fields.phone.clone(),
        address: fields.address.clone(),
    })?;
    if &again == fields {
        Ok(())
    } else {
        Err(Error::InvalidInput(
            "the fields are not in their validated form (untrimmed, or an empty optional value)"
                .into(),
        ))
    }
}

fn required_text(value: Option<String>, field: &str, max: usize) -> Result<String> {
    match optional_text(value, field, max)? {
        Some(v) => Ok(v),
        None => Err(Error::InvalidInput(format!("{field} is required"))),
    }
}

fn optional_text(value: Option<String>, field: &str, max: usize) -> Result<Option<String>> {
    let Some(raw) = value else { return Ok(None) };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidInput(format!(
            "{field} must not contain control characters"
        )));
    }
    if let Some(c) = trimmed.chars().find(|c| is_bidi_control(*c)) {
        return Err(Error::InvalidInput(format!(
            "{field} must not contain the bidirectional control U+{:04X}: it can make text display differently from what is stored",
            c as u32
        )));
    }
    let chars = trimmed.chars().count();
    if chars > max {
        return Err(Error::InvalidInput(format!(
            "{field} is {chars} characters long, more than the {max} allowed"
        )));
    }
    Ok(Some(trimmed.to_owned()))
}

/// A pragmatic email check: one `@`, a non-empty local part, a dotted domain of sensible labels,
/// no whitespace. Deliverability is not our business; obvious typos are.
fn check_email(email: &str) -> Result<()> {
    let bad = || Error::InvalidInput(format!("email {email:?} is not a valid address"));
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(bad());
    }
    if email.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    if let Some(c) = email.chars().find(|c| is_format_char(*c)) {
        return Err(Error::InvalidInput(format!(
            "email must not contain the invisible character U+{:04X}",
            c as u32
        )));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

fn check_phone(phone: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_digit() || " +-().".contains(c);
    let digits = phone.chars().filter(char::is_ascii_digit).count();
    if !phone.chars().all(allowed) {
        return Err(Error::InvalidInput(format!(
            "phone {phone:?} may contain only digits, spaces and the characters + - ( ) ."
        )));
    }
    if digits < 3 {
        return Err(Error::InvalidInput(format!(
            "phone {phone:?} must contain at least 3 digits"
        )));
    }
    Ok(())
}

/// Bidirectional embedding, override and isolate controls (U+202A–202E, U+2066–2069). They
/// make stored text display differently from its characters ("Trojan Source" spoofing), and no
/// real name needs them: right-to-left names render correctly without explicit controls.
/// Joiners (U+200C ZWNJ, U+200D ZWJ), which Persian, Indic scripts and emoji sequences need,
/// are deliberately not in this set.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Unicode general category `Cf` (format characters, Unicode 15): invisible characters such as
/// U+200B ZERO WIDTH SPACE or U+FEFF. An address containing one looks identical to one without
/// it, so two "different" emails would read the same to a person: they are refused in emails.
pub fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// The uniqueness key of an email: two addresses with the same key are the same mailbox, and
/// only one live customer may have it. Stored next to the email as typed.
///
/// * local part: NFKC, then full Unicode case folding, then NFKC again (repeated until
///   stable), so `José`, `jose\u{301}` (decomposed), `JOSÉ` and fullwidth `ｊosé` agree;
/// * domain: the same folding, then IDNA (UTS #46) to its ASCII form (`bücher.de` →
///   `xn--bcher-kva.de`); a domain IDNA refuses keeps its folded Unicode form.
///
/// Idempotent: the key of a key is itself. Dots, `+tags` and the like are not removed:
/// whether a provider ignores them is the provider's rule, not a property of the address.
pub fn email_key(email: &str) -> String {
    let (local, domain) = email.rsplit_once('@').unwrap_or((email, ""));
    let domain = fold(domain);
    let domain = match idna::domain_to_ascii(&domain) {
        Ok(ascii) if !ascii.is_empty() => ascii,
        _ => domain,
    };
    format!("{}@{domain}", fold(local))
}

/// NFKC and full case folding until the text stops changing (a fold can produce characters
/// NFKC maps again, and the reverse; two or three rounds settle any real input).
fn fold(text: &str) -> String {
    const MAX_ROUNDS: usize = 4;
    let mut current: String = text.nfkc().collect();
    for _ in 0..MAX_ROUNDS {
        let next: String = caseless::default_case_fold_str(&current).nfkc().collect();
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Checks a client's `If-Match` against the current version.
pub fn check_precondition(if_match: Option<u64>, current: u64) -> Result<()> {
    match if_match {
        Some(expected) if expected != current => {
            Err(Error::PreconditionFailed { expected, current })
        }
        _ => Ok(()),
    }
}

/// True when a retried create (same id) carries the fields already stored, so replaying it is a
/// success rather than a conflict. Compares emails by [`email_key`], like the unique index.
pub fn is_same_create(stored: &CustomerFields, requested: &CustomerFields) -> bool {
    stored.name == requested.name
        && email_key(&stored.email) == email_key(&requested.email)
        && stored.phone == requested.phone
        && stored.address == requested.address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, email: &str) -> FieldsInput {
        FieldsInput {
            name: Some(name.into()),
            email: Some(email.into()),
            ..Default::default()
        }
    }

    fn fields() -> CustomerFields {
        validate(FieldsInput {
            name: Some("Ada".into()),
            email: Some("ada@example.com".into()),
            phone: Some("+44 20 1234".into()),
            address: Some("1 Analytical Row".into()),
        })
        .unwrap()
    }

    #[test]
    fn valid_input_is_trimmed_and_accepted() {
        let f = validate(input("  Ada Lovelace ", " ada@example.com")).unwrap();
        assert_eq!(f.name, "Ada Lovelace");
        assert_eq!(f.email, "ada@example.com");
        assert_eq!(f.phone, None);
    }

    #[test]
    fn name_is_required_and_bounded_in_characters_not_bytes() {
        assert!(validate(input("", "a@b.co")).is_err());
        assert!(validate(input("   ", "a@b.co")).is_err());
        let ok = "é".repeat(MAX_NAME_CHARS);
        assert!(validate(input(&ok, "a@b.co")).is_ok());
        let too_long = "é".repeat(MAX_NAME_CHARS + 1);
        assert!(matches!(
            validate(input(&too_long, "a@b.co")),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn bidi_controls_are_refused_in_every_text_field() {
        for c in ['\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}'] {
            let spoof = format!("Ada{c}ecalevol");
            assert!(validate(input(&spoof, "a@b.co")).is_err(), "name {c:?}");
            let mut with_address = input("Ada", "a@b.co");
            with_address.address = Some(spoof.clone());
            let err = validate(with_address).unwrap_err().to_string();
            assert!(
                err.contains("address") && err.contains("bidirectional"),
                "{err}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn a_bidi_control_anywhere_in_any_field_is_refused(
            text in "[a-zA-Zé ]{1,40}",
            at in 0usize..40,
            control in proptest::sample::select(vec!['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}']),
            field in 0usize..3,
        ) {
            let mut chars: Vec<char> = format!("x{text}x").chars().collect();
            chars.insert(at.min(chars.len() - 1) + 1, control);
            let spoof: String = chars.into_iter().collect();
            let mut fields = input("Ada", "a@b.co");
            match field {
                0 => fields.name = Some(spoof),
                1 => fields.address = Some(spoof),
                _ => fields.email = Some(format!("a{}@b.co", spoof.replace(' ', ""))),
            }
            proptest::prop_assert!(validate(fields).is_err());
        }

        #[test]
        fn names_with_joiners_between_letters_are_accepted(
            parts in proptest::collection::vec("[a-zA-Zа-яمهرناز]{1,8}", 1..5),
        ) {
            let name = parts.join("\u{200C}");
            proptest::prop_assert_eq!(validate(input(&name, "a@b.co")).unwrap().name, name);
        }
    }

    #[test]
    fn joiners_that_real_names_need_are_accepted() {
        // Persian "Mehrnaz" written with U+200C ZERO WIDTH NON-JOINER.
        let persian = "مهر\u{200C}ناز";
        assert_eq!(validate(input(persian, "m@b.co")).unwrap().name, persian);
        let family = "👩\u{200D}👩\u{200D}👧 Family";
        assert!(validate(input(family, "f@b.co")).is_ok());
    }

    #[test]
    fn invisible_characters_are_refused_in_emails() {
        for c in ['\u{200B}', '\u{FEFF}', '\u{00AD}', '\u{2060}', '\u{200C}'] {
            let email = format!("jo{c}se@example.com");
            let err = validate(input("José", &email)).unwrap_err().to_string();
            assert!(err.contains("invisible"), "{c:?}: {err}");
        }
        assert!(validate(input("José", "josé@example.com")).is_ok());
    }

    #[test]
    fn the_phone_error_says_the_rule_that_was_broken() {
        let few = validate(FieldsInput {
            phone: Some("12".into()),
            ..input("Ada", "a@b.co")
        })
        .unwrap_err()
        .to_string();
        assert!(few.contains("at least 3 digits"), "{few}");
        let letters = validate(FieldsInput {
            phone: Some("555-CALL".into()),
            ..input("Ada", "a@b.co")
        })
        .unwrap_err()
        .to_string();
        assert!(letters.contains("only digits"), "{letters}");
    }

    #[test]
    fn unicode_names_are_data() {
        let f = validate(input("李小龍 🐉", "bruce@example.com")).unwrap();
        assert_eq!(f.name, "李小龍 🐉");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for bad in [
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@-b.com",
            "a@b..com",
        ] {
            assert!(validate(input("x", bad)).is_err(), "{bad} accepted");
        }
        assert!(validate(input("x", "first.last+tag@sub.example.co.uk")).is_ok());
    }

    #[test]
    fn fields_that_crossed_the_network_pass_only_in_their_validated_form() {
        assert_eq!(revalidate(&fields()), Ok(()));
        let hostile = [
            ("name", "\u{1b}]0;pwned\u{7}\u{1b}[31mAlice"),
            ("name", "Alice \u{202E}evil"),
            ("email", "not-an-email"),
            ("phone", "\u{1b}[2J"),
            ("address", "Main St\r\nforged: line"),
            ("name", " Alice "),
            ("phone", ""),
        ];
        for (field, value) in hostile {
            let mut f = fields();
            match field {
                "name" => f.name = value.into(),
                "email" => f.email = value.into(),
                "phone" => f.phone = Some(value.into()),
                _ => f.address = Some(value.into()),
            }
            assert!(
                matches!(revalidate(&f), Err(Error::InvalidInput(_))),
                "{field} {value:?} passed"
            );
        }
    }

    #[test]
    fn control_characters_are_rejected() {
        assert!(validate(input("a\u{0}b", "a@b.co")).is_err());
    }

    #[test]
    fn phone_must_look_like_a_phone_number() {
        let mut i = input("x", "a@b.co");
        i.phone = Some("call me".into());
        assert!(validate(i.clone()).is_err());
        i.phone = Some("+1 (555) 010-9999".into());
        assert_eq!(
            validate(i).unwrap().phone.as_deref(),
            Some("+1 (555) 010-9999")
        );
    }

    #[test]
    fn a_malformed_id_is_echoed_cut_to_a_readable_length() {
        let Err(Error::InvalidInput(short)) = parse_customer_id("nope") else {
            panic!("accepted")
        };
        assert_eq!(short, "malformed customer id \"nope\": expected a UUID");
        let Err(Error::InvalidInput(long)) = parse_customer_id(&"é".repeat(5000)) else {
            panic!("accepted")
        };
        assert!(long.contains("… (5000 characters)"), "{long}");
        assert!(long.chars().count() < 150, "{long}");
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let mut i = input("", "not-an-email");
        i.phone = Some("call me".into());
        i.address = Some("x".repeat(MAX_ADDRESS_CHARS + 1));
        let Err(Error::InvalidInput(message)) = validate(i) else {
            panic!("invalid input accepted");
        };
        for field in ["name is required", "email", "phone", "address"] {
            assert!(message.contains(field), "{field} missing from {message:?}");
        }
        assert_eq!(message.matches("; ").count(), 3, "{message}");
    }

    #[test]
    fn merge_patch_keeps_absent_members_clears_null_and_sets_values() {
        let patch = CustomerPatch {
            name: FieldPatch::Set("Ada L.".into()),
            phone: FieldPatch::Clear,
            ..Default::default()
        };
        let out = patch.apply(&fields()).unwrap();
        assert_eq!(out.name, "Ada L.");
        assert_eq!(out.email, "ada@example.com");
        assert_eq!(out.phone, None);
        assert_eq!(out.address.as_deref(), Some("1 Analytical Row"));
    }

    #[test]
    fn merge_patch_cannot_null_a_required_field() {
        let patch = CustomerPatch {
            email: FieldPatch::Clear,
            ..Default::default()
        };
        assert!(matches!(
            patch.apply(&fields()),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn merge_patch_result_is_validated() {
        let patch = CustomerPatch {
            email: FieldPatch::Set("nope".into()),
            ..Default::default()
        };
        assert!(patch.apply(&fields()).is_err());
    }

    #[test]
    fn precondition_passes_without_if_match_or_with_the_current_version() {
        assert!(check_precondition(None, 7).is_ok());
        assert!(check_precondition(Some(7), 7).is_ok());
        assert_eq!(
            check_precondition(Some(6), 7),
            Err(Error::PreconditionFailed {
                expected: 6,
                current: 7
            })
        );
    }

    #[test]
    fn next_version_increments_by_one_and_keeps_identity() {
        let c = Customer::new(new_customer_id(), fields(), 100);
        let mut changed = fields();
        changed.name = "B".into();
        let n = c.next_version(changed.clone(), 200);
        assert_eq!(
            (n.id, n.version, n.created_at, n.updated_at),
            (c.id, 2, 100, 200)
        );
        assert_eq!(n.fields, changed);
    }

    #[test]
    fn a_replayed_create_matches_ignoring_email_case_only() {
        let a = fields();
        let mut b = fields();
        b.email = "ADA@EXAMPLE.com".into();
        assert!(is_same_create(&a, &b));
        b.email = "ａda@example.com".into();
        assert!(is_same_create(&a, &b));
        b.name = "Other".into();
        assert!(!is_same_create(&a, &b));
    }

    #[test]
    fn one_mailbox_written_four_ways_has_one_key() {
        let typed = [
            "josé@example.com",
            "jose\u{301}@example.com",
            "JOSÉ@Example.COM",
            "\u{FF4A}osé@example.com",
        ];
        for email in typed {
            assert!(validate(input("José", email)).is_ok(), "{email} refused");
            assert_eq!(email_key(email), "josé@example.com", "{email}");
        }
        assert_ne!(email_key("jose@example.com"), email_key("josé@example.com"));
    }

    #[test]
    fn the_domain_key_is_its_idna_ascii_form() {
        assert_eq!(email_key("Max@Bücher.DE"), "max@xn--bcher-kva.de");
        assert_eq!(email_key("max@xn--bcher-kva.de"), "max@xn--bcher-kva.de");
        // German sharp s folds to "ss" in the local part (full case folding).
        assert_eq!(email_key("STRAẞE@x.io"), email_key("strasse@x.io"));
    }

    proptest::proptest! {
        #[test]
        fn the_email_key_is_idempotent(
            local in "[a-zA-Z0-9._+éÉßẞｊＡΣσς\u{301}\u{FB01}\u{2126}\u{212B}\u{2474}\u{00A8}-]{1,20}",
            domain in "[a-zA-Z0-9üÜｅ\u{2126}-]{1,12}\\.(com|de|xn--bcher-kva)",
        ) {
            let key = email_key(&format!("{local}@{domain}"));
            proptest::prop_assert_eq!(email_key(&key), key.clone());
        }
    }

    #[test]
    fn ids_parse_or_fail_clearly() {
        let id = new_customer_id();
        assert_eq!(parse_customer_id(&id.to_string()).unwrap(), id);
        assert!(matches!(
            parse_customer_id("not-a-uuid"),
            Err(Error::InvalidInput(_))
        ));
    }
}
