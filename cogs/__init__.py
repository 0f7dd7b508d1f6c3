"""The Discord surface: cogs that parse events and slash commands, call bot.assistant, render replies."""
