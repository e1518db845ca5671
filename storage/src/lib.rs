//! openraft storage on sled.
