//! Simulators of the outside world, used by the tests and by `otpgate demo`.
