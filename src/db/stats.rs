//! Planner statistics for young tables.
//!
//! The hot statements run on generic plans, made once per connection and
//! kept until a table they read is analyzed again. A table that has never
//! been analyzed is planned as ten pages; a plan made then scans it whole,
//! and keeps doing so as the table grows, until autovacuum's first look
//! (its naptime, a minute by default). So the service analyzes its own
//! tables while they are young: each time one has doubled since it was last
//! analyzed (or vacuumed), from 16 pages on. That is a handful of `ANALYZE`s
//! per table over its youth, each of a small table; past it, autovacuum's
//! thresholds take over and this finds nothing to do.

use sqlx::PgPool;

/// The advisory lock key that lets one process at a time analyze.
const ANALYZE_LOCK: i64 = 0x6578_6563_7374_6174; // "execstat"

/// Smallest table, in pages, worth analyzing here: below it the planner's
/// ten-page guess for a table never analyzed is near the truth.
const MIN_PAGES: i64 = 16;

/// Analyzes the tables of the service's schema that have at least doubled
/// since their statistics were taken, unless another process is doing so;
/// returns their names. Only tables its role may analyze (it owns them) are
/// looked at. Waits for no lock: a table that autovacuum holds is
/// left for the next call.
pub async fn analyze_grown(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    let mut tx = pool
        .begin_with("BEGIN; SET LOCAL lock_timeout = '100ms'")
        .await?;
    let leads: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(ANALYZE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !leads {
        return Ok(Vec::new());
    }
    let grown: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_class c,
                LATERAL (SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint AS pages) s
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
           AND pg_has_role(c.relowner, 'USAGE')
           AND s.pages >= $1 AND s.pages >= 2 * greatest(c.relpages, 0)
         ORDER BY 1",
    )
    .bind(MIN_PAGES)
    .fetch_all(&mut *tx)
    .await?;
    if grown.is_empty() {
        return Ok(grown);
    }
    // The names are the catalog's own, quoted by `regclass` where they need it.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE {}", grown.join(", "))))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(grown)
}
