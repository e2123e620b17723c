//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::handlers as h;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kapsel API", description = "Kapsel's management API. See docs/API.md."),
    paths(
        h::login, h::logout, h::whoami,
        h::users_list, h::users_add, h::users_get, h::users_change, h::users_delete, h::users_unlock, h::password,
        h::tokens_list, h::tokens_add, h::tokens_delete,
        h::tfa_get, h::tfa_new_secret, h::tfa_add, h::tfa_recovery, h::tfa_delete,
        h::realms_list, h::realms_set,
        h::roles_list, h::roles_add, h::roles_delete,
        h::acl_list, h::acl_set, h::acl_delete, h::acl_explain,
        h::pools_list, h::pools_get, h::pools_add, h::pools_change, h::pools_delete,
        h::host, h::audit_tail,
        h::guests_list, h::guests_get, h::guests_act,
    ),
    modifiers(&Security),
    security(("token" = []), ("ticket" = [])),
)]
struct Doc;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("USER@REALM!TOKEN=SECRET"))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::ticket::COOKIE))),
        );
    }
}

/// The document as JSON.
pub(crate) fn document() -> Result<String, serde_json::Error> {
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_json()
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_openapi_3_1_and_lists_the_endpoints() {
        let s = super::document().unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/api/v1/access/ticket",
            "/api/v1/access/acl/explain",
            "/api/v1/guests/{name}/{action}",
            "/api/v1/access/users/{userid}/tokens",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert!(v["components"]["schemas"]["ErrorBody"].is_object());
    }
}
