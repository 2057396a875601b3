"""The only code that talks to DynamoDB: pynamodb models and repositories."""
