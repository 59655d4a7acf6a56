//! workspace-start-operator
