"""Schemathesis hooks for scripts/fuzz-api.

1. Valid requests for the examples phase. Our document has no examples and few formats, so
   generated orders, emails or adjustments almost never pass validation and the happy paths
   (and every later GET of what they create) would go untested. These known-good requests run
   first; the ids in their responses feed the stateful phase. A few known-nasty inputs that once
   broke something ride along as regression cases.
2. The admin operations are fuzzed with a real admin token, so a generated request could switch
   off the fuzz tenant (`PATCH /admin/v1/tenants/{slug}` with `"active": false`) or revoke its API
   key (`DELETE /admin/v1/api-keys/{id}`, e.g. with an id read from a key listing). Every tenant
   operation after that would answer 401 and test nothing: those requests are dropped, and
   scripts/fuzz-api still checks the key at the end.
"""

import os
import uuid

import schemathesis

TENANT_SLUG = os.environ.get("FUZZ_TENANT_SLUG", "")
PROTECTED_KEY_IDS = {k for k in os.environ.get("FUZZ_PROTECTED_KEY_IDS", "").split(",") if k}
SKU = os.environ.get("FUZZ_SKU", "FUZZ-1")
TENANT_KEY = os.environ.get("FUZZ_TENANT_KEY", "")
ADMIN_TOKEN = os.environ.get("FUZZ_ADMIN_TOKEN", "")


def _key(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _adjustment(delta, reason):
    return {"sku": SKU, "delta": delta, "reason": reason, "idempotency_key": _key("fuzz-adj")}


def _by_id(env_var, name="id"):
    """A case reading the resource scripts/fuzz-api created, when it could create one."""
    value = os.environ.get(env_var, "")
    return [dict(path_parameters={name: value})] if value else []


def _examples():
    """Operation label -> list of case keyword arguments."""
    json_body = lambda body, **kw: dict(body=body, media_type="application/json", **kw)  # noqa: E731
    return {
        "GET /v1/orders/{id}": _by_id("FUZZ_ORDER_ID"),
        "GET /v1/invoices/{id}": _by_id("FUZZ_INVOICE_ID"),
        "GET /v1/invoices/{id}/pdf": _by_id("FUZZ_INVOICE_ID"),
        "GET /v1/jobs/{id}": _by_id("FUZZ_JOB_ID") + _by_id("FUZZ_FAILED_JOB_ID"),
        "GET /v1/emails/{id}": _by_id("FUZZ_EMAIL_ID"),
        "GET /v1/forecasts/runs/{id}": _by_id("FUZZ_RUN_ID"),
        "GET /v1/sales/imports/{id}": _by_id("FUZZ_IMPORT_ID"),
        "POST /admin/v1/jobs/{id}/retry": _by_id("FUZZ_FAILED_JOB_ID"),
        "PUT /v1/products/{sku}": [
            json_body(
                {"name": "Fuzz widget", "unit_price": "3.20", "currency": "EUR", "reorder_point": 2,
                 "reorder_quantity": 10, "lead_time_days": 4, "allow_negative": True},
                path_parameters={"sku": "FUZZ-3"},
            ),
        ],
        "GET /v1/products/{sku}": [dict(path_parameters={"sku": SKU})],
        "GET /v1/products/{sku}/movements": [dict(path_parameters={"sku": SKU}, query={"limit": 2})],
        "GET /v1/products/{sku}/forecast": [dict(path_parameters={"sku": SKU})],
        "GET /v1/products": [dict(query={"limit": 1})],
        "POST /v1/stock-adjustments": [json_body(_adjustment(5, "receipt"))],
        "POST /v1/stock-adjustments/batch": [
            json_body({"adjustments": [_adjustment(-1, "sale"), _adjustment(2, "return")]})
        ],
        "POST /v1/orders": [
            json_body(
                {"customer": {"name": "Fuzz Buyer", "email": "buyer@example.com", "address": "1 Main St"},
                 "currency": "EUR", "tax_rate": "0.081",
                 "lines": [{"sku": SKU, "quantity": 1}, {"sku": "FUZZ-2", "quantity": 2, "unit_price": "9.99"}]}
            ),
        ],
        "POST /v1/emails": [
            json_body({"to": "someone@example.com", "subject": "Fuzz", "text": "Hello",
                       "html": "<p>Hello</p>", "idempotency_key": _key("fuzz-mail")}),
        ],
        "POST /v1/sales/import": [
            dict(body="date,sku,quantity\n2026-01-01,FUZZ-1,3\n2026-01-02,FUZZ-1,4\n", media_type="text/csv"),
            # A NUL in a cell: the import's report must still be storable (Postgres jsonb refuses
            # \u0000), else the job retries a failure that cannot go away.
            dict(body="date,sku,quantity\n2026-01-01,FU\x00ZZ,3\n", media_type="text/csv"),
        ],
        "POST /v1/forecasts/runs": [json_body({"horizon_days": 14, "skus": [SKU]})],
        "POST /admin/v1/tenants": [json_body({"name": "Fuzz Other", "slug": _key("fuzz-other")})],
        "PATCH /admin/v1/tenants/{slug}": [
            json_body({"alert_email": "ops@example.com", "timezone": "Europe/Zurich"},
                      path_parameters={"slug": TENANT_SLUG}),
        ],
        "GET /admin/v1/tenants/{slug}/api-keys": [dict(path_parameters={"slug": TENANT_SLUG})],
        "POST /admin/v1/tenants/{slug}/api-keys": [dict(path_parameters={"slug": TENANT_SLUG})],
        "GET /admin/v1/queues/{queue}/jobs": [
            dict(path_parameters={"queue": "stock"}, query={"status": "queued"}),
            dict(path_parameters={"queue": "stock"}, query={"status": "failed", "limit": 5}),
            dict(path_parameters={"queue": "invoices"}, query={"status": "succeeded"}),
        ],
    }


@schemathesis.hook
def before_add_examples(context, examples):
    operation = context.operation
    if operation is None:
        return
    for kwargs in _examples().get(operation.label, []):
        case = operation.Case(**kwargs)
        _authenticate(case)
        examples.append(case)


def _authenticate(case):
    """Explicit cases do not go through the configured `[auth.openapi.*]`: apply it here, the way
    generated cases get it (so checks such as `ignored_auth` know the credential is a real one)."""
    try:
        from schemathesis.auths import AuthContext, set_on_case

        set_on_case(case, AuthContext(operation=case.operation, app=case.operation.app), None)
    except ImportError:  # an internal API that moved: send the credential ourselves
        token = ADMIN_TOKEN if case.operation.path.startswith(("/admin/", "/metrics")) else TENANT_KEY
        case.headers["Authorization"] = f"Bearer {token}"


@schemathesis.hook
def filter_case(context, case):
    path = case.operation.path
    method = case.method.upper()
    params = case.path_parameters or {}
    if method == "PATCH" and path == "/admin/v1/tenants/{slug}" and params.get("slug") == TENANT_SLUG:
        body = case.body
        return not (isinstance(body, dict) and body.get("active") is False)
    if method == "DELETE" and path == "/admin/v1/api-keys/{id}":
        return str(params.get("id")) not in PROTECTED_KEY_IDS
    return True
