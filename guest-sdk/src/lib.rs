//! The foldhost guest SDK.
