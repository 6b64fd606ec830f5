//! History for the decay benchmark: copies of a real resource's finished
//! operations, put in a service's database with `INSERT … SELECT
//! generate_series`, so a million operations take a minute or two, not the
//! hours it would take to run them.
//!
//! The template is a resource the service really created and deleted (its
//! operations, their tasks and the resource's events, as the service wrote
//! them). Every copy keeps every column of the template's rows except the
//! ids, which are new uuid-v7-like ids dated with the copy, and the times,
//! which are shifted to the copy's place in the past `--days` days. Columns
//! added later are copied too, so the shapes stay the service's own.

use anyhow::{Context, Result, bail};
use sqlx::PgPool;
use uuid::Uuid;

/// `bench seed`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SeedArgs {
    /// The service's database.
    #[arg(long, env = "DATABASE_URL")]
    pub(crate) database_url: String,
    /// The resource whose finished operations are copied (created and
    /// deleted through the API first; see `scripts/bench decay`).
    #[arg(long)]
    pub(crate) template: Uuid,
    /// Finished operations to put in history (rounded up to whole copies
    /// of the template's operations).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) operations: i64,
    /// Spread the copies over this many past days (under the retention's
    /// 7, so the prune job has nothing to remove; more, and it does).
    #[arg(long, default_value_t = 6.0)]
    pub(crate) days: f64,
}

/// The tables copied, and how their rows are found from the template resource.
const TABLES: [(&str, &str); 3] = [
    (
        "operations",
        "SELECT * FROM operations WHERE resource_id = $1 AND finished_at IS NOT NULL",
    ),
    (
        "tasks",
        "SELECT t.* FROM tasks t JOIN operations o ON o.id = t.operation_id
         WHERE o.resource_id = $1 AND o.finished_at IS NOT NULL",
    ),
    (
        "resource_events",
        "SELECT * FROM resource_events WHERE resource_id = $1",
    ),
];

/// A table's columns that a copy writes (not those filled by a sequence), with their types.
async fn columns(pool: &PgPool, table: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1
           AND coalesce(column_default, '') NOT LIKE 'nextval(%'
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pool)
    .await?)
}

/// Puts `--operations` finished operations in history; prints what it put.
pub(crate) async fn seed(args: &SeedArgs) -> Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await
        .context("connecting to the database")?;
    // A bulk load of rows already consistent: no foreign-key checks and no
    // triggers (this history never had webhook subscribers), when allowed.
    let fast = sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&pool)
        .await
        .is_ok();
    if !fast {
        eprintln!("seed: cannot skip foreign-key checks (not a superuser); slower");
    }
    let started = std::time::Instant::now();
    // Every id of the template, with its rank by time: a copy's ids are the
    // copy's time, then the rank (so they sort as the template's did), then
    // random-looking bits.
    sqlx::raw_sql("DROP TABLE IF EXISTS pg_temp.seed_ids")
        .execute(&pool)
        .await?;
    sqlx::query(
        "CREATE TEMP TABLE seed_ids AS
         SELECT id, (row_number() OVER (ORDER BY created_at, id) - 1)::int AS rank FROM (
             SELECT $1::uuid AS id, min(created_at) AS created_at FROM operations WHERE resource_id = $1
             UNION ALL SELECT id, created_at FROM operations WHERE resource_id = $1 AND finished_at IS NOT NULL
             UNION ALL SELECT t.id, t.created_at FROM tasks t JOIN operations o ON o.id = t.operation_id
                       WHERE o.resource_id = $1 AND o.finished_at IS NOT NULL
         ) ids",
    )
    .bind(args.template)
    .execute(&pool)
    .await?;
    let (ops, t0, t1): (
        i64,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT count(*), min(created_at), max(finished_at) FROM operations
             WHERE resource_id = $1 AND finished_at IS NOT NULL",
    )
    .bind(args.template)
    .fetch_one(&pool)
    .await?;
    let (Some(t0), Some(t1)) = (t0, t1) else {
        bail!(
            "resource {} has no finished operation to copy",
            args.template
        );
    };
    if ops == 0 {
        bail!(
            "resource {} has no finished operation to copy",
            args.template
        );
    }
    let copies = (args.operations + ops - 1) / ops;
    // Copy i starts at now - days + i * spacing; the copies never overlap.
    let span_ms = (args.days * 86_400_000.0) as i64;
    let spacing_ms = (span_ms / copies).max((t1 - t0).num_milliseconds() + 1);
    let now: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
    let mut inserted = Vec::new();
    for (table, select) in TABLES {
        let cols = columns(&pool, table).await?;
        if cols.is_empty() {
            bail!("no table {table}");
        }
        let uuid_refs = ["id", "operation_id", "resource_id", "task_id"];
        // The template's rows with the rank of each id they hold.
        let mut joins = String::new();
        let mut ranks = String::new();
        let exprs: Vec<String> = cols
            .iter()
            .map(|(name, ty)| {
                let col = format!("t.{name}");
                if ty == "uuid" && uuid_refs.contains(&name.as_str()) {
                    joins.push_str(&format!(
                        " LEFT JOIN seed_ids m_{name} ON m_{name}.id = x.{name}"
                    ));
                    ranks.push_str(&format!(", m_{name}.rank AS rank_{name}"));
                    // The template's ids (and its resource's) become the copy's.
                    format!(
                        "CASE WHEN t.rank_{name} IS NULL THEN {col} ELSE
                             (lpad(to_hex((extract(epoch FROM s.at) * 1000)::bigint), 12, '0') || '7'
                              || lpad(to_hex(t.rank_{name}), 3, '0') || '8'
                              || substr(md5(s.i::text || {col}::text), 1, 15))::uuid END"
                    )
                } else if ty == "timestamp with time zone" {
                    format!("{col} + (s.at - $2::timestamptz)")
                } else if name == "name" {
                    format!("{col} || '-' || s.i")
                } else {
                    col
                }
            })
            .collect();
        let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
        let sql = format!(
            "WITH s AS (
                 SELECT i, $6::timestamptz - make_interval(secs => $4::bigint / 1000.0)
                        + make_interval(secs => i * $5::bigint / 1000.0) AS at
                 FROM generate_series(0, $3::bigint - 1) AS i
             ), t AS MATERIALIZED (SELECT x.*{ranks} FROM ({select}) x{joins})
             INSERT INTO {table} ({names})
             SELECT {exprs} FROM s, t ORDER BY s.i, t.created_at",
            select = select.replace("$1", "$1::uuid"),
            names = names.join(", "),
            exprs = exprs.join(",\n       "),
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(args.template)
            .bind(t0)
            .bind(copies)
            .bind(span_ms)
            .bind(spacing_ms)
            .bind(now)
            .execute(&pool)
            .await
            .with_context(|| format!("copying {table}"))?;
        inserted.push(format!(
            "{table} {} ({:.1} s)",
            done.rows_affected(),
            started.elapsed().as_secs_f64()
        ));
    }
    let (before, size): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM operations WHERE finished_at < now() - interval '7 days'),
                pg_size_pretty(pg_total_relation_size('operations') + pg_total_relation_size('tasks')
                               + pg_total_relation_size('resource_events'))",
    )
    .fetch_one(&pool)
    .await?;
    eprintln!(
        "seed: {copies} copies of {ops} operations of resource {} in {:.1} s: {}; \
         operations older than 7 days: {before}; operations + tasks + resource_events now {size}",
        args.template,
        started.elapsed().as_secs_f64(),
        inserted.join(", "),
    );
    Ok(())
}
