//! Where an uploaded sales CSV lives between the upload and its import job: in Postgres, in
//! parts of at most [`PART_BYTES`], written as the request body arrives.
//!
//! Holding a whole upload in memory (up to `BACKROOM_MAX_IMPORT_BYTES`, 64 MiB) while it is read
//! let a few tenants' parallel uploads take an API process's memory. Now a request holds one
//! part; the size and row limits are checked as the bytes pass, so an oversized upload is
//! refused as soon as it crosses the limit. The import job reads the parts back in one query
//! and drops them once the import has loaded or failed.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The largest part stored.
pub const PART_BYTES: usize = 1 << 20;

/// An upload being written.
pub struct UploadWriter {
    import_id: Uuid,
    next_part: i32,
    buffer: Vec<u8>,
    hasher: Sha256,
    bytes: usize,
    newlines: usize,
    /// Where the first newline is, once it has arrived.
    header_bytes: Option<usize>,
    last_byte: Option<u8>,
}

/// What the whole upload turned out to be.
pub struct Written {
    pub sha256: String,
    pub bytes: usize,
    /// Lines, counting a last line without a newline (the header is one of them).
    pub lines: usize,
}

impl UploadWriter {
    pub fn new(import_id: Uuid) -> Self {
        Self {
            import_id,
            next_part: 0,
            buffer: Vec::with_capacity(PART_BYTES),
            hasher: Sha256::new(),
            bytes: 0,
            newlines: 0,
            header_bytes: None,
            last_byte: None,
        }
    }

    /// Bytes taken so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The first line's (the header's) length so far, in bytes, without its newline.
    pub fn header_bytes(&self) -> usize {
        self.header_bytes.unwrap_or(self.bytes)
    }

    /// Lines so far, counting an unfinished last one.
    pub fn lines(&self) -> usize {
        self.newlines + usize::from(self.last_byte.is_some_and(|b| b != b'\n'))
    }

    /// Takes the next bytes of the upload, writing every full part.
    pub async fn write(&mut self, db: &PgPool, mut chunk: &[u8]) -> sqlx::Result<()> {
        self.hasher.update(chunk);
        if self.header_bytes.is_none() {
            self.header_bytes = chunk
                .iter()
                .position(|&b| b == b'\n')
                .map(|at| self.bytes + at);
        }
        self.bytes += chunk.len();
        self.newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        if let Some(&last) = chunk.last() {
            self.last_byte = Some(last);
        }
        while !chunk.is_empty() {
            let room = PART_BYTES - self.buffer.len();
            let (now, rest) = chunk.split_at(room.min(chunk.len()));
            self.buffer.extend_from_slice(now);
            chunk = rest;
            if self.buffer.len() == PART_BYTES {
                self.flush(db).await?;
            }
        }
        Ok(())
    }

    /// Writes what is left (at least one part, so an empty upload reads back as empty).
    pub async fn finish(mut self, db: &PgPool) -> sqlx::Result<Written> {
        if !self.buffer.is_empty() || self.next_part == 0 {
            self.flush(db).await?;
        }
        let (bytes, lines) = (self.bytes, self.lines());
        Ok(Written {
            sha256: hex::encode(self.hasher.finalize_reset()),
            bytes,
            lines,
        })
    }

    async fn flush(&mut self, db: &PgPool) -> sqlx::Result<()> {
        sqlx::query!(
            "INSERT INTO sales_import_parts (import_id, part, data) VALUES ($1, $2, $3)",
            self.import_id,
            self.next_part,
            &self.buffer
        )
        .execute(db)
        .await?;
        self.next_part += 1;
        self.buffer.clear();
        Ok(())
    }
}

/// The whole file of an import and the import's status; `None` for the file once it has been
/// dropped (the import has loaded or failed).
pub async fn read(
    db: &PgPool,
    tenant: Uuid,
    import_id: Uuid,
) -> sqlx::Result<Option<(Option<Vec<u8>>, String)>> {
    let row = sqlx::query!(
        r#"SELECT coalesce(i.body, (SELECT string_agg(p.data, ''::bytea ORDER BY p.part)
                                    FROM sales_import_parts p WHERE p.import_id = i.id)) AS body,
                  i.status
           FROM sales_imports i WHERE i.id = $1 AND i.tenant_id = $2"#,
        import_id,
        tenant
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.body, r.status)))
}

/// Drops an import's file (its parts, and the whole body older versions stored).
pub async fn drop_file(conn: &mut sqlx::PgConnection, import_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM sales_import_parts WHERE import_id = $1",
        import_id
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE sales_imports SET body = NULL WHERE id = $1",
        import_id
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
