//! Reading Components from the API server's JSON one object at a time, so that one object that
//! does not fit [`Component`] (nested deeper than serde_json's 128 levels, which the API server
//! accepts under `x-kubernetes-preserve-unknown-fields`; a field of the wrong type) is reported
//! as [`Unreadable`] and never fails the listing, the watch or the request it came in.
//!
//! Envelopes (a list, a watch event) keep each object as raw text ([`RawValue`]); serde_json
//! skips over such text without recursion and without a depth limit. Each object is then
//! decoded on its own; one that fails is read again for what the producer needs to report it
//! and write its status: a few metadata fields, `spec.handler` and the status, every other
//! field skipped the same way (`managedFields` too, which mirrors a deep spec).

use helmq_schemas::component::{Component, ComponentSpec, ComponentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::Status;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A Component that cannot be decoded, with what could be read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// Its namespace, name, uid, generation, resourceVersion, finalizers and deletion time,
    /// `spec.handler` and status, as far as they could be read; the rest of its spec is empty.
    /// Good for reporting it and writing its status, never for deploying it.
    pub component: Component,
    /// Why it cannot be decoded.
    pub error: String,
}

/// One object as the API server answered with it: a list item, a watch event's object, or
/// the object a read or a write answered with. A write that answers with an unreadable object
/// was still carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// A Component.
    Component(Box<Component>),
    /// An object that is not one.
    Unreadable(Box<Unreadable>),
}

impl Observed {
    /// Its metadata (a skeleton for an unreadable object).
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Observed::Component(c) => &c.metadata,
            Observed::Unreadable(u) => &u.component.metadata,
        }
    }

    /// The Component, or what could be read of an unreadable object (see
    /// [`Unreadable::component`]).
    pub fn component(&self) -> &Component {
        match self {
            Observed::Component(c) => c,
            Observed::Unreadable(u) => &u.component,
        }
    }

    /// The Component (or what could be read of it) and, when it cannot be read as one, why.
    pub fn into_parts(self) -> (Component, Option<String>) {
        match self {
            Observed::Component(c) => (*c, None),
            Observed::Unreadable(u) => (u.component, Some(u.error)),
        }
    }

    /// The Component, or what could be read of an unreadable object.
    pub fn into_component(self) -> Component {
        self.into_parts().0
    }
}

impl From<Component> for Observed {
    fn from(component: Component) -> Observed {
        Observed::Component(Box::new(component))
    }
}

/// One page of a list response.
#[derive(Debug)]
pub struct Page {
    /// Its objects, in order.
    pub items: Vec<Observed>,
    /// `metadata.resourceVersion` of the list: where a watch starts.
    pub resource_version: String,
    /// `metadata.continue`: the token of the next page, if any.
    pub next: Option<String>,
}

/// One event of a watch stream.
#[derive(Debug)]
pub enum Event {
    /// `ADDED` or `MODIFIED`.
    Applied(Observed),
    /// `DELETED`.
    Deleted(Observed),
    /// `BOOKMARK`: the watch is at this resourceVersion.
    Bookmark(String),
    /// `ERROR`: the server's status (410: the resourceVersion is too old, list again).
    Error(Box<Status>),
}

/// Decodes one object; never fails: what cannot be read is [`Observed::Unreadable`].
pub fn decode(text: &str) -> Observed {
    match serde_json::from_str::<Component>(text) {
        Ok(component) => Observed::Component(Box::new(component)),
        Err(error) => Observed::Unreadable(Box::new(Unreadable {
            component: skeleton(text),
            error: error.to_string(),
        })),
    }
}

/// A list response, its items decoded one by one.
pub fn decode_page(text: &str) -> Result<Page, serde_json::Error> {
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(default)]
        metadata: ListMeta,
        #[serde(borrow, default)]
        items: Vec<&'a RawValue>,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct ListMeta {
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default, rename = "continue")]
        next: Option<String>,
    }
    let list: List<'_> = serde_json::from_str(text)?;
    Ok(Page {
        items: list.items.iter().map(|raw| decode(raw.get())).collect(),
        resource_version: list.metadata.resource_version.unwrap_or_default(),
        next: list.metadata.next.filter(|t| !t.is_empty()),
    })
}

/// One line of a watch stream. `None` for an event type this producer does not know.
pub fn decode_event(line: &str) -> Result<Option<Event>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: String,
        #[serde(borrow)]
        object: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Bookmark {
        metadata: Version,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        resource_version: String,
    }
    let line: Line<'_> = serde_json::from_str(line)?;
    let object = line.object.get();
    Ok(match line.kind.as_str() {
        "ADDED" | "MODIFIED" => Some(Event::Applied(decode(object))),
        "DELETED" => Some(Event::Deleted(decode(object))),
        "BOOKMARK" => Some(Event::Bookmark(
            serde_json::from_str::<Bookmark>(object)?
                .metadata
                .resource_version,
        )),
        "ERROR" => Some(Event::Error(Box::new(serde_json::from_str(object)?))),
        _ => None,
    })
}

/// What can be read of an object that is not a [`Component`]: the metadata fields the
/// producer uses, `spec.handler` and the status, each dropped when it cannot be read.
fn skeleton(text: &str) -> Component {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        generation: Option<i64>,
        resource_version: Option<String>,
        finalizers: Option<Vec<String>>,
        deletion_timestamp: Option<Time>,
        creation_timestamp: Option<Time>,
    }
    #[derive(Deserialize, Default)]
    struct OnlyMeta {
        #[serde(default)]
        metadata: Meta,
    }
    #[derive(Deserialize, Default)]
    struct Spec {
        #[serde(default)]
        handler: String,
    }
    #[derive(Deserialize)]
    struct WithSpec {
        spec: Spec,
    }
    #[derive(Deserialize)]
    struct WithStatus {
        status: Option<ComponentStatus>,
    }
    let meta = serde_json::from_str::<OnlyMeta>(text)
        .unwrap_or_default()
        .metadata;
    let handler = serde_json::from_str::<WithSpec>(text)
        .map(|s| s.spec.handler)
        .unwrap_or_default();
    let status = serde_json::from_str::<WithStatus>(text)
        .ok()
        .and_then(|s| s.status);
    let mut component = Component::new(
        "",
        ComponentSpec {
            name: String::new(),
            handler,
            config: None,
            deployment_timeout: None,
            termination_timeout: None,
        },
    );
    component.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        generation: meta.generation,
        resource_version: meta.resource_version,
        finalizers: meta.finalizers,
        deletion_timestamp: meta.deletion_timestamp,
        creation_timestamp: meta.creation_timestamp,
        ..ObjectMeta::default()
    };
    component.status = status;
    component
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"a":{"a":...{"a":1}...}}`, `depth` objects deep.
    fn nested(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    fn object(name: &str, values: &str) -> String {
        format!(
            r#"{{"apiVersion":"deployment-orchestrator.io/v1alpha1","kind":"Component",
            "metadata":{{"name":"{name}","namespace":"shop","uid":"u-{name}","generation":2,
              "resourceVersion":"7","finalizers":["x"],
              "managedFields":[{{"manager":"kubectl","fieldsV1":{{"f:spec":{values}}}}}]}},
            "spec":{{"name":"{name}","handler":"helm","config":{{"values":{values}}}}},
            "status":{{"phase":"Claimed","observedGeneration":1}}}}"#
        )
    }

    #[test]
    fn one_object_too_deep_leaves_the_others_readable() {
        let deep = nested(200);
        let text = format!(
            r#"{{"kind":"ComponentList","metadata":{{"resourceVersion":"42","continue":"t"}},
            "items":[{},{},{}]}}"#,
            object("a", "{}"),
            object("deep", &deep),
            object("b", r#"{"x":[1,2]}"#),
        );
        let page = decode_page(&text).unwrap();
        assert_eq!(page.resource_version, "42");
        assert_eq!(page.next.as_deref(), Some("t"));
        let names: Vec<_> = page
            .items
            .iter()
            .map(|d| {
                (
                    d.meta().name.clone().unwrap(),
                    matches!(d, Observed::Component(_)),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("a".into(), true),
                ("deep".into(), false),
                ("b".into(), true)
            ]
        );
        let Observed::Unreadable(u) = &page.items[1] else {
            unreachable!()
        };
        assert!(u.error.contains("recursion limit"), "{}", u.error);
        let meta = &u.component.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(meta.uid.as_deref(), Some("u-deep"));
        assert_eq!(meta.generation, Some(2));
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert_eq!(meta.finalizers.as_deref(), Some(&["x".to_owned()][..]));
        assert_eq!(u.component.spec.handler, "helm");
        assert_eq!(u.component.spec.config, None);
        assert_eq!(
            u.component
                .status
                .as_ref()
                .and_then(|s| s.observed_generation),
            Some(1)
        );
    }

    #[test]
    fn wrong_types_are_unreadable_with_what_can_be_read() {
        let cases = [
            (
                "handler a number",
                r#"{"metadata":{"name":"c"},"spec":{"handler":3}}"#,
                "",
            ),
            (
                "status a string",
                r#"{"metadata":{"name":"c"},"spec":{"name":"c","handler":"helm","config":{}},"status":"x"}"#,
                "helm",
            ),
            ("no spec", r#"{"metadata":{"name":"c"}}"#, ""),
            ("not an object", r#"[1]"#, ""),
        ];
        for (name, text, handler) in cases {
            let Observed::Unreadable(u) = decode(text) else {
                panic!("{name}: decoded");
            };
            assert_eq!(u.component.spec.handler, handler, "{name}");
            if text.starts_with('{') {
                assert_eq!(u.component.metadata.name.as_deref(), Some("c"), "{name}");
            }
        }
    }

    #[test]
    fn a_very_deep_object_is_skipped_without_recursion() {
        // Far beyond any stack a recursive reader would need for it.
        let deep = nested(100_000);
        let line = format!(r#"{{"type":"ADDED","object":{}}}"#, object("deep", &deep));
        let Some(Event::Applied(Observed::Unreadable(u))) = decode_event(&line).unwrap() else {
            panic!("not an unreadable apply");
        };
        assert_eq!(u.component.metadata.name.as_deref(), Some("deep"));
    }

    #[test]
    fn watch_lines_are_events() {
        let bookmark = r#"{"type":"BOOKMARK","object":{"kind":"Component","metadata":{"resourceVersion":"99"}}}"#;
        assert!(matches!(decode_event(bookmark).unwrap(), Some(Event::Bookmark(v)) if v == "99"));
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#;
        assert!(matches!(decode_event(gone).unwrap(), Some(Event::Error(s)) if s.code == 410));
        let deleted = format!(r#"{{"object":{},"type":"DELETED"}}"#, object("a", "{}"));
        assert!(matches!(
            decode_event(&deleted).unwrap(),
            Some(Event::Deleted(Observed::Component(_)))
        ));
        assert!(
            decode_event(r#"{"type":"NEW","object":{}}"#)
                .unwrap()
                .is_none()
        );
        assert!(decode_event("{").is_err());
    }
}
