//! Model references, resolution to local files, and the built-in tiny model.
