//! PNG encoding with AUTOMATIC1111 infotext, and reading it back.
