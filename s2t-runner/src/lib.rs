//! The reference application (not built yet; see the s2t-runner issue).
//!
//! It will run the s2t-medium-librispeech-asr Speech2Text model on audio, reading its
//! weights in place from a read-only store mapping or streaming them from S3, and report
//! how long getting the weights took. Nothing here yet.
