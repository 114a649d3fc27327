"""Every view table, migrated together (stores.database.Database.migrate)."""

from stores import audit, billing, gdpr, plans, quotas, replays, slos, stripe, suspensions, views, webhooks

SCHEMA = ";\n".join(
    script.strip().rstrip(";")
    for script in (
        views.SCHEMA,
        plans.SCHEMA,
        quotas.SCHEMA,
        billing.SCHEMA,
        stripe.SCHEMA,
        audit.SCHEMA,
        slos.SCHEMA,
        replays.SCHEMA,
        gdpr.SCHEMA,
        webhooks.SCHEMA,
        suspensions.SCHEMA,
    )
)
