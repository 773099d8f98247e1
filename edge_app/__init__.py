"""What runs on the robot: the `rlivs` command line (and later the services). Only this package parses argv."""
