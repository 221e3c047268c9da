//! OTLP JSON lines file exporter (`exporter.file`): each export request becomes one line,
//! the `serde_json` serialization of the opentelemetry-proto `Export*ServiceRequest`
//! (`{"resourceSpans":[...]}`), as the Collector's file exporter writes. The file is opened
//! in append mode (parent directories created) and flushed after every request.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{ExportError, ExportRequest, ExporterBuildError};

/// Appends export requests to a file, one JSON document per line.
#[derive(Debug)]
pub struct FileExporter {
    /// The configured path.
    path: PathBuf,
    /// The open file; the lock keeps concurrent requests' lines whole.
    file: Mutex<tokio::fs::File>,
}

impl FileExporter {
    /// Creates the parent directories and opens `path` for appending.
    pub fn open(path: &Path) -> Result<FileExporter, ExporterBuildError> {
        let error = |source| ExporterBuildError::File {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(error)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(error)?;
        Ok(FileExporter {
            path: path.to_owned(),
            file: Mutex::new(tokio::fs::File::from_std(file)),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `request` as one line and flushes it to the OS. A failed write is retryable
    /// (the disk may be full for a while); a request that cannot be serialized is permanent.
    pub async fn export(&self, request: &ExportRequest) -> Result<(), ExportError> {
        let mut line = match request {
            ExportRequest::Traces(r) => serde_json::to_vec(r),
            ExportRequest::Logs(r) => serde_json::to_vec(r),
            ExportRequest::Metrics(r) => serde_json::to_vec(r),
        }
        .map_err(|e| ExportError::Permanent(format!("cannot serialize request as JSON: {e}")))?;
        line.push(b'\n');
        let mut file = self.file.lock().await;
        let written = async {
            file.write_all(&line).await?;
            file.flush().await
        }
        .await;
        written.map_err(|e| ExportError::Retryable {
            retry_after: None,
            message: format!("cannot write {}: {e}", self.path.display()),
        })
    }
}
