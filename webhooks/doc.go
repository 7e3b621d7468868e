// Package webhooks tells the studio's backend when AI jobs and batches end,
// with signed HTTP calls (Standard Webhooks: webhook-id, webhook-timestamp,
// webhook-signature) to the endpoints an admin registered.
//
// The database writes the deliveries: a trigger on river_job puts one row
// per subscribed endpoint into webhook_outbox in the transaction that ends
// the job (migrations/sql/00007_webhooks.sql), so an ending that commits
// has its deliveries and one that rolls back has none. A Deliverer in every
// process that works jobs claims due rows (FOR UPDATE SKIP LOCKED, so
// processes share the work), builds each body once from the job or batch as
// the API shows it, signs it, and posts it, retrying with back-off for 24
// hours until the endpoint answers 2xx. Events of one job reach an endpoint
// in the order they happened.
//
// Endpoints (Create, List, Delete) and deliveries (ListDeliveries, Replay)
// are the admin API's store.
package webhooks
