//! copas
