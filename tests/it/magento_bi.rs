//! End-to-end tests of the magento_bi provider (being written).
