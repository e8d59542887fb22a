"""Webhook sources: each turns one inbound request into a Notification."""
